"""Device and precision choice, in one place.

bf16 autocast is used where the hardware runs it natively (CPUs with AMX or AVX-512-bf16, CUDA GPUs
with bf16): weights and the optimizer stay fp32, convolutions and matmuls run in bf16.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from cnnlab.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    tune_cpu_allocator()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device = 'cuda' but no CUDA GPU is available — use --device cpu or auto")
    return torch.device(name)


_allocator_tuned = False


def tune_cpu_allocator() -> None:
    """Keep freed tensor memory in the process instead of returning it to the OS after every step.

    glibc serves blocks above 32 MB with mmap and unmaps them on free, so each training step page-faults
    its large activations in again (filling 39 MB of fresh pages cost ~20 ms per tensor here, as much as the
    pooling itself). Turning mmap off and trimming only above 512 MB made a seed_cnn CPU step ~1.45x faster.
    Glibc only; ``CNNLAB_MALLOC_TUNING=0`` leaves the allocator alone.
    """
    global _allocator_tuned
    if _allocator_tuned or os.environ.get("CNNLAB_MALLOC_TUNING", "1") == "0":
        return
    _allocator_tuned = True
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
            return
        m_trim_threshold, m_mmap_max = -1, -4
        libc.mallopt(m_mmap_max, 0)
        libc.mallopt(m_trim_threshold, 512 << 20)
    except (OSError, AttributeError):
        pass


def cpu_description() -> str:
    """CPU model and core count, for run.json and benchmark provenance ("AMD EPYC, 2 cores")."""
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


def resolve_precision(precision: str, device: torch.device, model: torch.nn.Module | None = None) -> str:
    """'auto': bf16 autocast on CUDA (fp16 without bf16) and on CPUs with native bf16, else fp32 — except on
    CPU for a model that sets ``cpu_autocast = False`` (mobilenetv2: its depthwise and small 1x1
    convolutions ran 1.5x slower in bf16 than in fp32 channels_last here; docs/recipes.md)."""
    if precision != "auto":
        return precision  # fp16 on a CPU works (with loss scaling, as on a GPU) but is slow: auto never picks it there
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if model is not None and getattr(model, "cpu_autocast", True) is False:
        return "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def process_age() -> float:
    """Seconds since this process started (Linux /proc; 0 elsewhere): `cnnlab train`'s time budget counts
    the interpreter start and imports too, so the whole command ends within it."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0
