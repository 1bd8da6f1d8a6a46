"""Video features: `decoding` (a video decoded once, in worker processes, staged into batches),
`encoding` (the frozen encoders, their weights, the quality adapter), `stores` (the Zarr feature
stores and their statistics); `extractor` and the `lmmvqa extract` command (`extract`) on top."""
