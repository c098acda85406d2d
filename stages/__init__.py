"""Thin CLIs, one per DVC stage: parse arguments, read params, call cocosnet."""
