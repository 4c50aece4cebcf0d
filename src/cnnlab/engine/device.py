"""Device and precision choice, in one place.

bf16 autocast is used where the hardware runs it natively (CPUs with AMX or AVX-512-bf16, CUDA GPUs
with bf16): weights and the optimizer stay fp32, convolutions and matmuls run in bf16.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from cnnlab.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device = 'cuda' but no CUDA GPU is available — use --device cpu or auto")
    return torch.device(name)


def cpu_description() -> str:
    """CPU model and core count, for run.json and benchmark provenance ("AMD EPYC, 2 cores")."""
    import os
    import platform

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return any(f in flags for f in (" amx_bf16", " avx512_bf16"))


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise ConfigError("precision = 'fp16' needs a CUDA GPU — use bf16 or fp32 on CPU")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
