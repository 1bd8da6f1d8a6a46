"""Videos and labels in: label files, the manifest, probing, the synthetic demo dataset."""
