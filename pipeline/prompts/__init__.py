"""Q&A prompt shards of a dataset (JSONL), and which shards each experiment trains and tests on."""
