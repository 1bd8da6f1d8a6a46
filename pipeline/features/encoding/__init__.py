"""The frozen encoders (`encoders`, the statistics encoders in `statistics_encoders`), their
pretrained weights (`weights`, downloaded by `fetch`) and the quality adapter (`quality_adapter`,
learnt by the `adapt_encoder` stage)."""
