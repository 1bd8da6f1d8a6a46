"""Decode videos once, encode key frames and motion, write and read the chunked Zarr feature stores."""
