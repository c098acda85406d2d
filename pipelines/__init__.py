"""Prefect flows; each task runs one DVC stage."""
