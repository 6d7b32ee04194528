"""Give back the memory a big request took, so one bad upload does not leave a worker gigabytes larger for good.

Why it stayed (BENCHMARKS.md, hostile round): glibc's malloc gives the request threads their own arenas (up to 8
per core) and, once a big buffer has been freed, raises its mmap threshold (up to 32 MiB), so later big buffers
(decoded images, resize scratch) come from those arenas too. When freed, that memory stays mapped inside the
arenas: a worker that had served a few heavy inputs kept gigabytes it no longer used.

What each worker does (gunicorn hooks in gunicorn.conf.py):
* after the fork, `tune_malloc()`: at most ARENA_MAX arenas, and fixed mmap and trim thresholds, so buffers above
  8 MiB (a big decoded image) are their own mappings and go back to the system the moment they are freed, while
  smaller ones (an upload's body, a batch tensor) reuse the heap;
* after each request, `MemoryGuard.after_request()`: when resident memory is more than TRIM_SLACK above the
  lowest seen, or IDLE_SLACK above the idle level once no other request is in flight, `malloc_trim(0)` hands the
  free pages inside the arenas back (at most once a second, in the request thread after its answer was sent).
Nothing here runs outside glibc (other C libraries: both are no-ops).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import threading
import time

M_TRIM_THRESHOLD = -1  # mallopt parameters (glibc malloc.h)
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

ARENA_MAX = 2
# 8 MiB: a decoded 12-MP image (36 MB) is mapped on its own; a 3-MB upload and its copies reuse the heap. At 1 MiB
# (until 2026-12-03) every such buffer was a fresh mapping, and setting one threshold also pins glibc's trim
# threshold at 128 KiB, so the heap's top went back to the system and was faulted in again on every request:
# 590-940 page faults per 12-MP upload; with 64-KiB body reads, 8-13 ms of server CPU per such upload on this VM
# (BENCHMARKS.md, "The upload's bytes").
MMAP_THRESHOLD = 8 << 20
TRIM_THRESHOLD = 8 << 20  # free memory at a heap's top kept for the next request; the guard trims the rest
TRIM_SLACK = 256 << 20
IDLE_SLACK = 32 << 20
TRIM_INTERVAL_S = 1.0
CHECK_INTERVAL_S = 0.05  # under load, resident memory is read at most this often (a /proc read per request: 1.4 %)

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def tune_malloc(arena_max: int = ARENA_MAX, mmap_threshold: int = MMAP_THRESHOLD,
                trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Bound the arenas and fix the mmap and trim thresholds in this process; False when not on glibc."""
    libc = _glibc()
    if libc is None:
        return False
    return all(libc.mallopt(option, value) for option, value in
               ((M_ARENA_MAX, arena_max), (M_MMAP_THRESHOLD, mmap_threshold), (M_TRIM_THRESHOLD, trim_threshold)))


def resident_bytes() -> int:
    """This process's resident set size (Linux /proc/self/statm), 0 where unavailable."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


class MemoryGuard:
    """Trims malloc's free memory after a request, at most once per `interval_s`, in two cases:

    * under load, when resident memory has grown `slack` above the level after the last trim (or the lowest seen
      since): what a trim cannot give back is in use, and becomes the new level;
    * when the worker falls idle (its last request in flight was answered) `idle_slack` above its idle level: the
      heap a burst of 12-MP uploads grew (~80 MiB per worker at 64 clients) goes back once the burst is over, at
      no cost while requests keep coming. What that trim cannot give back becomes the idle level.

    While other requests are in flight, resident memory is read at most once per `check_interval_s`."""

    def __init__(self, slack: int = TRIM_SLACK, interval_s: float = TRIM_INTERVAL_S,
                 idle_slack: int = IDLE_SLACK, check_interval_s: float = CHECK_INTERVAL_S) -> None:
        self.libc = _glibc()
        self.slack, self.interval_s, self.idle_slack = slack, interval_s, idle_slack
        self.check_interval_s = check_interval_s
        self._last_check = 0.0
        self.floor = 0
        self.idle_level = 0
        self.in_flight = 0
        self.trims = 0
        self._last = 0.0
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()

    def before_request(self) -> None:
        with self._count_lock:
            self.in_flight += 1

    def after_request(self) -> None:
        with self._count_lock:
            self.in_flight = max(0, self.in_flight - 1)
            idle = self.in_flight == 0
        if self.libc is None:
            return
        now = time.monotonic()
        if not idle and now - self._last_check < self.check_interval_s:
            return
        self._last_check = now
        rss = resident_bytes()
        if idle and (not self.idle_level or rss < self.idle_level):
            self.idle_level = rss
        if not self.floor or rss < self.floor:
            self.floor = rss
            return
        grown = rss - self.floor >= self.slack or (idle and rss - self.idle_level >= self.idle_slack)
        if not grown or now - self._last < self.interval_s:
            return
        if not self._lock.acquire(blocking=False):  # another thread is trimming
            return
        try:
            self.libc.malloc_trim(0)
            self.trims += 1
            self._last = time.monotonic()
            self.floor = resident_bytes() or self.floor
            if idle:
                self.idle_level = self.floor
        finally:
            self._lock.release()
