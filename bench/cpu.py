"""Where the CPU goes: milliseconds of CPU per answered request, split between a server and our load generator.

On a machine whose cores are all busy, throughput is (cores x 1000 ms/s) / (CPU ms one answer costs, everything
on the machine included). So a ratio to the no-HTTP ceiling is a ratio of CPU per answer, and this module says
which part of that cost belongs to the server under test and which to the load generator sharing its cores.
Read from /proc (Linux), summed over every process of the server's session: gunicorn workers, TorchServe's JVM
and its Python backends alike.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _process_table() -> dict[int, tuple[int, int, list[str]]]:
    """pid -> (ppid, session id, stat fields after the name) of every live process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        table[int(entry.name)] = (int(fields[1]), int(fields[3]), fields)
    return table


def server_pids(session_id: int, table: dict[int, tuple[int, int, list[str]]] | None = None) -> list[int]:
    """The live processes of a server started with `start_new_session=True` (session id = its pid): every process
    of that session, and every descendant of one, even in a session of its own (BentoML's workers call setsid)."""
    table = _process_table() if table is None else table
    ours = {pid for pid, (_, sid, _) in table.items() if sid == session_id}
    grew = True
    while grew:
        more = {pid for pid, (ppid, _, _) in table.items() if ppid in ours and pid not in ours}
        ours |= more
        grew = bool(more)
    return sorted(ours)


def session_cpu_s(session_id: int) -> float:
    """User + system CPU seconds used so far by the live processes of one server (`server_pids`): gunicorn
    workers, TorchServe's JVM and its Python backends, Ray's and BentoML's workers alike."""
    table = _process_table()
    ticks = 0
    for pid in server_pids(session_id, table):
        fields = table[pid][2]  # after the name: state ppid pgrp session ... utime(11) stime(12)
        ticks += int(fields[11]) + int(fields[12])
    return ticks * CLOCK_TICK_S


def session_minor_faults(session_id: int) -> int:
    """Minor page faults so far of the live processes of one server (`server_pids`): with glibc's thresholds pinned
    low, every big buffer was a fresh mapping faulted in page by page (BENCHMARKS.md, "The upload's bytes")."""
    table = _process_table()
    return sum(int(table[pid][2][7]) for pid in server_pids(session_id, table))  # after the name: ... minflt(7)


def session_memory_kib(session_id: int) -> dict[str, int]:
    """Summed VmRSS and Pss (KiB) of the live processes of one server (`server_pids`). RSS counts pages that forked
    workers share once per process; Pss splits each shared page between its sharers, so it is the fairer "memory
    this server holds" when one server forks workers (ours, LitServe) and another starts fresh processes (Ray)."""
    rss = pss = 0
    for pid in server_pids(session_id):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except (OSError, IndexError, ValueError):  # ended meanwhile, or a kernel thread
            continue
    return {"rss_kib": rss, "pss_kib": pss}


def machine_busy_s() -> float:
    """CPU seconds every core together spent busy since boot (not idle, not waiting for I/O)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) * CLOCK_TICK_S


def own_cpu_s() -> float:
    """CPU seconds used by this process and its reaped children (the servers a run started and stopped)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


@dataclass(frozen=True)
class CpuSnapshot:
    server_s: float  # the server's session
    client_s: float  # this process: the load generator's threads
    machine_s: float  # everything

    @classmethod
    def take(cls, server_session: int) -> "CpuSnapshot":
        return cls(session_cpu_s(server_session), time.process_time(), machine_busy_s())


def cpu_per_answer_ms(before: CpuSnapshot, after: CpuSnapshot, answers: int) -> dict[str, float]:
    """Milliseconds of CPU per answer between two snapshots: server, load generator, whole machine."""
    if answers <= 0:
        return {}
    scale = 1000.0 / answers
    return {"server_cpu_ms": round((after.server_s - before.server_s) * scale, 3),
            "client_cpu_ms": round((after.client_s - before.client_s) * scale, 3),
            "machine_cpu_ms": round((after.machine_s - before.machine_s) * scale, 3)}
