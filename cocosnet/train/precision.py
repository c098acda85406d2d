"""Mixed precision: the dtype a training step autocasts to on its device, if any.

* CUDA: `amp` in `amp_dtype` (bf16, or fp16 with the trainers' GradScalers).
* CPU: `amp_cpu`, always bf16, and only on a CPU with native bf16 instructions (AVX512-BF16 or AMX).
  Elsewhere oneDNN emulates bf16 more slowly than fp32, so the step warns and stays in fp32.

Either way the correspondence's similarities, search and softmax warps stay in fp32
(`models/correspondence.py`): divided by the temperature 0.01, bf16's 8-bit mantissa could move a
logit by about 2^-8 / 0.01 = 0.4. Measured (docs/decisions/2026-12-02-bf16-autocast-cpu.md): the 512^2 pretrain
step 1.4x faster and 1.3x leaner in bf16.
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager, nullcontext

import torch


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def autocast_dtype(device: torch.device, *, amp: bool, amp_dtype: str, amp_cpu: bool) -> torch.dtype | None:
    """The autocast dtype for a step on `device`, or None for fp32."""
    if device.type == "cuda":
        return getattr(torch, amp_dtype) if amp else None
    if device.type != "cpu" or not amp_cpu:
        return None
    if not native_cpu_bf16():
        warnings.warn("amp_cpu is set, but this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 is "
                      "slower than fp32: training in fp32", RuntimeWarning, stacklevel=2)
        return None
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """Autocast to `dtype` on `device`'s type; nothing for None."""
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
