"""Data half of the pipeline: pose labels, DeepFashion-HD layout, synthetic data, pairs."""
