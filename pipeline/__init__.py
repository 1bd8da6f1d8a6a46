"""LMM-VQA pipeline."""
