"""Memory of the serving processes: serving/memory.py on the real glibc (malloc's free memory goes back to the
system, in a fresh process), and a real two-worker server that shares its imported heap and leaves Triton out."""
from __future__ import annotations

import importlib.util
import json
import platform
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests
from support import ROOT, sample_files

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


# Allocate, touch and free a 3-MiB buffer (an upload's body and its copies) again and again; count page faults.
REUSE_PROBE = """
import resource, sys
from serving.memory import tune_malloc
assert tune_malloc(**({"mmap_threshold": 1 << 20} if sys.argv[1] == "old" else {}))
def churn():
    buffer = bytearray(3 << 20)  # zero-filled: every page touched
    del buffer
for _ in range(5):
    churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults_of_twenty_uploads(setting: str) -> int:
    result = subprocess.run([sys.executable, "-c", REUSE_PROBE, setting], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def test_an_upload_sized_buffer_reuses_the_heap_instead_of_new_pages():
    """At the old 1-MiB mmap threshold each 3-MiB buffer was a fresh mapping: 768 page faults every time (a 12-MP
    upload paid 590-940 of them). Now it comes from the heap, already mapped."""
    assert page_faults_of_twenty_uploads("old") > 20 * 700  # the probe sees the cost it is meant to see
    assert page_faults_of_twenty_uploads("new") < 20 * 50


# Two requests in flight leave 300 MB of freed heap behind (far below the load rule's slack): the first answer
# must not trim (the other request is still running), the last one must.
IDLE_PROBE = """
import json
from serving.memory import MemoryGuard, resident_bytes
guard = MemoryGuard(slack=1 << 40, interval_s=0.0, idle_slack=64 << 20, check_interval_s=0.0)
guard.before_request(); guard.after_request()  # the idle level
guard.before_request(); guard.before_request()
buffers = [bytearray(100_000) for _ in range(3_000)]
kept = buffers[::50]
del buffers
before = resident_bytes()
guard.after_request()
trims_with_one_in_flight = guard.trims
guard.after_request()
print(json.dumps({"before": before, "after": resident_bytes(), "busy": trims_with_one_in_flight, "idle": guard.trims}))
"""


def test_the_guard_trims_when_the_worker_falls_idle():
    result = subprocess.run([sys.executable, "-c", IDLE_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    numbers = json.loads(result.stdout)
    assert numbers["busy"] == 0, numbers  # no trim while a request is still in flight
    assert numbers["idle"] == 1, numbers
    assert numbers["before"] - numbers["after"] > 200 << 20, numbers


def test_under_load_the_guard_reads_resident_memory_rarely_and_always_at_idle(monkeypatch):
    from serving import memory

    reads = []
    monkeypatch.setattr(memory, "resident_bytes", lambda: reads.append(1) or 100 << 20)
    guard = memory.MemoryGuard(check_interval_s=3600)
    for _ in range(50):
        guard.before_request()
    for _ in range(49):  # answered while others are still in flight
        guard.after_request()
    assert len(reads) <= 1
    busy_reads = len(reads)
    guard.after_request()  # the last one: the worker falls idle
    assert len(reads) == busy_reads + 1


def test_malloc_accepts_the_tuning():
    result = subprocess.run([sys.executable, "-c", "from serving.memory import tune_malloc; print(tune_malloc())"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "True", result.stderr


def smaps_rollup(pid: int) -> dict[str, int]:
    """The kernel's memory summary of one process, in KiB (Rss, Pss, Anonymous, Private_Dirty ...)."""
    fields = (line.split() for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    return {parts[0].rstrip(":"): int(parts[1]) for parts in fields if len(parts) >= 2 and parts[1].isdigit()}


def maps_triton(pid: int) -> bool:
    return "libtriton" in Path(f"/proc/{pid}/maps").read_text()


TRITON_INSTALLED = importlib.util.find_spec("triton") is not None  # with torch's CUDA build, as here and on CI


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux /proc/PID/smaps_rollup")
def test_workers_share_the_masters_imported_heap_and_no_process_loads_triton(start_server, tiny_bundle_path):
    """`python flask_server.py`, two workers, some answers served. The master's heap is the ~380 MiB of Python
    objects imported before the fork; frozen before each fork (gunicorn.conf.py pre_fork), nearly all of it stays
    shared with the workers: without the freeze, each worker's first full collection copied a quarter of it
    (Private_Dirty 103 of 382 MiB in the master, against 28 with it; BENCHMARKS.md "Memory"). The ONNX graph is
    exported first, as the install step does: an export inside a worker imports and changes much more."""
    subprocess.run([sys.executable, "-m", "inference.export", "--model", str(tiny_bundle_path)], cwd=ROOT, check=True,
                   capture_output=True, timeout=300)
    server = start_server(tiny_bundle_path, workers=2)
    for path in sample_files()[:8]:
        with path.open("rb") as image:
            assert requests.post(server.url + "/predict", files={"file": image}, timeout=30).status_code == 200
    master = psutil.Process(server.process.pid)
    workers = master.children()
    assert len(workers) == 2
    heap = smaps_rollup(master.pid)
    assert heap["Private_Dirty"] < 0.15 * heap["Anonymous"], heap
    if TRITON_INSTALLED:
        assert not any(maps_triton(pid) for pid in [master.pid, *(w.pid for w in workers)])


@pytest.mark.skipif(not TRITON_INSTALLED, reason="Triton is not installed: nothing to keep out")
def test_a_plain_gunicorn_master_keeps_triton_out_too():
    """`gunicorn` run in the project folder reads gunicorn.conf.py before anything else; once it has run, the
    model's imports (torchvision) must not bring Triton in."""
    code = ("import runpy, sys\nrunpy.run_path('gunicorn.conf.py')\nimport torchvision\n"
            "print(repr(sys.modules.get('triton', 'absent')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.stdout.strip().splitlines()[-1] == "None", result.stderr[-2000:]
