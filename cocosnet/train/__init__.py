"""Training: explicit G/D/correspondence steps, checkpoints, schedule, data-parallel helpers."""
