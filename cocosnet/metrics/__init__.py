"""Evaluation metrics: paired image metrics and correspondence accuracy."""
