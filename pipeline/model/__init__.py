"""The LMM: tokenizer, prompt format, projector + LLM, the answers it gives and their constrained decoding."""
