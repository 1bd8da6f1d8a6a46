"""Predictions of a trained model, per-experiment evaluation, fold aggregation, report, scoring video files."""
