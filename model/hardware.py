"""Which CPU a timing was taken on.

"AMD EPYC, 2 cores" covers hosts whose speed differs threefold for this model (with and without AVX-512), so
every published timing names the vector extensions too: numbers from different hosts are not comparable.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

# widest first: the first one present is what oneDNN / ONNX Runtime kernels can use
SIMD_LEVELS = (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("sse4_2", "SSE4.2"))
EXTRAS = (("avx512_vnni", "VNNI"), ("avx512_bf16", "BF16"), ("amx_tile", "AMX"))


def cpu_description(cpuinfo: str | None = None, cores: bool = True) -> str:
    """e.g. "AMD EPYC, 2 cores, AVX-512 (VNNI, BF16)"; falls back to platform.processor() off Linux."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return platform.processor() or "unknown CPU"
    lines = cpuinfo.splitlines()
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or "unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    simd = next((label for flag, label in SIMD_LEVELS if flag in flags), "no AVX2")
    extras = [label for flag, label in EXTRAS if flag in flags]
    count = f", {os.cpu_count()} cores" if cores else ""
    return f"{name}{count}, {simd}" + (f" ({', '.join(extras)})" if extras else "")
