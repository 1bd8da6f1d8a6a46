"""The chunked Zarr feature stores: writing (`store_writer`), reading (`store_reader`) and the
dataset-level feature statistics computed over them (`stats`)."""
