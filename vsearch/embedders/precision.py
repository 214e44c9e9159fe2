"""Numeric precision and CPU threading for the model stage.

bf16 roughly quadruples CLIP's CPU throughput on chips with native bf16 (AVX512-BF16 /
AMX) while keeping vectors within cos 0.999 of fp32, so "auto" picks it there and
embedding caches are shared between the two (precision is not in the fingerprint).
Models that cannot keep that promise opt out of bf16 under "auto".
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading

from vsearch.errors import ModelError

PRECISIONS = ("auto", "fp32", "bf16")

# How a model runs in bf16:
#   "weights"  - cast weights and inputs to bf16 (fastest for transformers);
#   "autocast" - keep fp32 weights, run convs/matmuls in bf16 via torch.autocast
#                (as fast for conv nets, and BatchNorm stays fp32, which keeps
#                EfficientNet inside the cos >= 0.999 budget).
BF16_MODES = ("weights", "autocast")

_threads_lock = threading.Lock()
_threads_configured = False


@functools.lru_cache(maxsize=1)
def bf16_supported() -> bool:
    """True when this CPU computes bf16 natively (emulated bf16 is slower than fp32)."""
    flags = _cpu_flags()
    if flags & {"avx512_bf16", "amx_bf16"}:
        return True
    if "bf16" in flags:  # aarch64 (Graviton 3+, Apple M2+) reports "bf16" in Features
        return True
    if not flags:  # no /proc/cpuinfo (macOS, Windows): ask torch's oneDNN build
        try:
            import torch

            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except Exception:
            return False
    return False


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def resolve_precision(requested: str, model_name: str, *, auto_bf16: bool = True) -> str:
    """Turn "auto" / "fp32" / "bf16" into the precision actually used, or refuse.

    auto_bf16=False for models whose bf16 vectors drift past cos 0.999 from fp32:
    "auto" then means fp32, so caches built either way stay interchangeable.
    """
    if requested not in PRECISIONS:
        raise ModelError(
            f"precision {requested!r} for model {model_name} is not known; "
            f"use one of {', '.join(PRECISIONS)}"
        )
    if requested == "auto":
        return "bf16" if auto_bf16 and bf16_supported() else "fp32"
    if requested == "bf16" and not bf16_supported():
        raise ModelError(
            f"precision 'bf16' was requested for model {model_name}, but this CPU lacks native "
            "bf16 (no avx512_bf16 / amx_bf16); use precision 'fp32' or 'auto'"
        )
    return requested


def prepare_model(model, precision: str, mode: str):
    """Put `model` in eval mode with the dtype `mode` needs; returns the model."""
    import torch

    model.eval()
    model.requires_grad_(False)
    if precision == "bf16" and mode == "weights":
        model.to(torch.bfloat16)
    return model


def input_dtype(precision: str, mode: str):
    """The dtype inputs must have for a model prepared by `prepare_model`."""
    import torch

    return torch.bfloat16 if precision == "bf16" and mode == "weights" else torch.float32


def compute_context(precision: str, mode: str):
    """Context manager to run a forward pass in (inference mode is the caller's job)."""
    import torch

    if precision == "bf16" and mode == "autocast":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def configure_threads() -> None:
    """Use every CPU the process may run on, unless the user already chose a thread count.

    Torch defaults to the machine's physical cores, which in containers and on
    hyper-threaded hosts is often below what we may use. An explicit OMP_NUM_THREADS /
    MKL_NUM_THREADS is respected, and the count is only ever raised, once per process,
    so a later torch.set_num_threads() by the user wins.
    """
    global _threads_configured
    with _threads_lock:
        if _threads_configured:
            return
        _threads_configured = True
        if os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS"):
            return
        import torch

        try:
            available = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            available = os.cpu_count() or 1
        if torch.get_num_threads() < available:
            torch.set_num_threads(available)
