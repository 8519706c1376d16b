"""Run-time settings that make training and prediction fast on the hardware at hand.

Chosen per device, applied by :func:`configure` (the training loop and prediction call it; a user
gets them without doing anything):

- CPU: glibc's allocator keeps freed memory instead of handing it back to the system on every
  iteration (``M_MMAP_MAX = 0``, a large ``M_TRIM_THRESHOLD``: no page faults per step); torch
  uses as many threads as cores are available to this process. The network's batch-of-one
  convolutions reach oneDNN through :class:`gbmseg.network.Conv3d` (see there).
- CUDA: cuDNN autotuning, TF32 matrix maths; mixed precision in bf16 where the GPU supports it,
  fp16 (with loss scaling) otherwise (:func:`amp_dtype`).

Never on CPU: bf16 autocast (100-200x slower on CPUs without AVX512-BF16).

Example:
    >>> import torch
    >>> configure(torch.device("cpu"))["threads"] >= 1
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import torch

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
_done: set[str] = set()


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _keep_freed_memory() -> bool:
    """glibc ``mallopt``: no mmap for large blocks, no trimming; False where there is no glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``device``: bf16 or fp16 on CUDA, None (full precision) elsewhere."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def configure(device: torch.device) -> dict:
    """Apply the settings for ``device`` once per process; returns what was set."""
    info = {"device": device.type}
    if device.type == "cpu":
        if "cpu" not in _done:
            info["allocator"] = _keep_freed_memory()
            if "OMP_NUM_THREADS" not in os.environ:
                torch.set_num_threads(available_cores())
            _done.add("cpu")
        info["threads"] = torch.get_num_threads()
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        info["amp"] = str(amp_dtype(device))
    return info
