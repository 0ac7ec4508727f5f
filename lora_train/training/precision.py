"""Mixed precision that the machine can run: bf16/fp16 autocast on a CPU without native support for that type
is emulated (a bf16 matmul ran ~400x slower than fp32 on an AVX2-only EPYC, see shared/HOST.md), so training
there computes in fp32 instead (adapters stay fp32 either way: the result means the same), with one log line.
CPUs with native support (avx512_bf16 / amx_bf16, avx512_fp16 / amx_fp16 on x86; bf16 / fphp on Arm) and GPUs
keep what was asked for."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

# Overrides the probe: "native" or "emulated" (tests force both ways; users on an odd kernel can too).
CPU_HALF_ENV = "LORA_TRAIN_CPU_HALF"
NATIVE_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16", "bf16"), "fp16": ("avx512_fp16", "amx_fp16", "fphp")}


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str] | None:
    """The CPU feature flags from /proc/cpuinfo (Linux), or None where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags |= set(value.split())
    return frozenset(flags)


def cpu_has_native(precision: str) -> bool:
    """Whether this CPU computes `precision` ("bf16"/"fp16") natively; unknown CPUs count as native (no change)."""
    forced = os.environ.get(CPU_HALF_ENV, "").strip().lower()
    if forced in ("native", "emulated"):
        return forced == "native"
    flags = _cpu_flags()
    return flags is None or any(flag in flags for flag in NATIVE_FLAGS.get(precision, ()))


def compute_precision(requested: str, device_type: str, *, explain: bool = False) -> str:
    """The mixed precision to train with on `device_type`: `requested`, or "no" (fp32) on a CPU that would
    emulate it (with `explain`, said in one log line)."""
    if requested == "no" or device_type != "cpu" or cpu_has_native(requested):
        return requested
    if not explain:
        return "no"
    log.info(
        "mixed_precision=%s computes in fp32 on this CPU: it has no native %s support, where %s runs emulated "
        "(hundreds of times slower than fp32); the adapters are fp32 either way",
        requested,
        requested,
        requested,
    )
    return "no"
