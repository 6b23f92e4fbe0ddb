"""What the CPU offers, read once: the facts every runtime choice here is made from.

The machines this runs on differ (some AVX-512 with VNNI, some AVX2 only, some with SMT), so
precision and thread counts are chosen at load time from these, never assumed.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

__all__ = [
    "BF16_FLAGS",
    "CPUINFO",
    "INT8_FLAGS",
    "cpu_flags",
    "has_bf16",
    "has_int8_dot_product",
    "physical_cores",
]

CPUINFO = Path("/proc/cpuinfo")
# Any of these gives onnxruntime's u8s8 GEMM a VNNI (or AMX) kernel without saturation; on plain
# AVX2, int8 GEMMs go through vpmaddubsw, which saturates 16-bit sums and can cost accuracy.
INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
# Native bfloat16 dot products (AVX-512 BF16, AMX): OpenVINO then runs fp32 models in bf16 at
# about twice fp32's speed; without them it would emulate bf16, which gains nothing.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The instruction-set flags of the first CPU listed (all cores of a host share them);
    empty where the file does not exist."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_int8_dot_product(flags: frozenset[str] | None = None) -> bool:
    return bool((cpu_flags() if flags is None else flags) & INT8_FLAGS)


def has_bf16(flags: frozenset[str] | None = None) -> bool:
    return bool((cpu_flags() if flags is None else flags) & BF16_FLAGS)


@functools.cache
def physical_cores(cpuinfo: Path = CPUINFO) -> int:
    """Physical cores this process may run on: a second thread on a core only contends for the
    same vector units, so llama.cpp and onnxruntime are given one thread per core."""
    cores: set[tuple[str, str]] = set()
    physical = ""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("physical id"):
                physical = line.split(":", 1)[1].strip()
            elif line.startswith("core id"):
                cores.add((physical, line.split(":", 1)[1].strip()))
    except OSError:
        pass
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return max(1, min(len(cores) or os.cpu_count() or 1, available or 1 << 16))
