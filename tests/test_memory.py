"""serving/memory.py on the real glibc: malloc's free memory goes back to the system, in a fresh process."""
from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest
from support import ROOT

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc tuning is glibc-only (a no-op)")

# Fill glibc's heap with 300 MB of 100-KB buffers (below its default mmap threshold), free all but every 50th so the
# heap cannot shrink from its top, and report resident memory before and after the guard's first check.
PROBE = """
import json, sys
from serving.memory import MemoryGuard, resident_bytes
guard = MemoryGuard(slack=64 << 20, interval_s=0.0)
guard.after_request()  # sets the level
buffers = [bytearray(100_000) for _ in range(3_000)]
kept = buffers[::50]
del buffers
before = resident_bytes()
guard.after_request()
print(json.dumps({"before": before, "after": resident_bytes(), "trims": guard.trims}))
"""


def probe() -> dict:
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_guard_gives_freed_heap_memory_back():
    numbers = probe()
    assert numbers["trims"] == 1
    assert numbers["before"] - numbers["after"] > 200 << 20, numbers  # most of the 300 MB


def test_malloc_accepts_the_tuning():
    result = subprocess.run([sys.executable, "-c", "from serving.memory import tune_malloc; print(tune_malloc())"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "True", result.stderr
