"""Training the projector (+ LoRA / LLM) from cached features and prompt shards."""
