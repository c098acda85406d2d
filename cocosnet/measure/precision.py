"""The trainer precision keys a benchmark's `--amp` flag stands for."""

from __future__ import annotations


def trainer_precision(section, amp: str) -> dict:
    """The `amp`, `amp_dtype` and `amp_cpu` keys that make a trainer autocast as `--amp` says, on any device
    (params.yaml's own `amp: true` would otherwise autocast a CUDA run benchmarked with `--amp off`)."""
    return {"amp": amp != "off", "amp_dtype": section.amp_dtype if amp == "off" else amp,
            "amp_cpu": amp == "bfloat16"}
