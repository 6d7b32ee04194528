"""Where a server's CPU goes under load:
`python -m bench.peers.profile --system ours --clients 16 --seconds 10 [--perf]`.

Starts one system as bench.run would (ours or a peer), loads it with the leaf (or `--input phone`, the 12-MP photo)
at N closed-loop clients and, at the same time, samples every Python process of the server with py-spy (installed
in .venv-peers; it reads the processes from outside, so it works on any of them). Prints the throughput, the
server's CPU ms per answer (bench/cpu.py) and, per process, the functions holding the most samples (own time, idle
waits left out), so two servers can be compared frame by frame (issue 19: where a peer wins, find out why).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

from bench import systems
from bench.cpu import CpuSnapshot, cpu_per_answer_ms, server_pids
from bench.inputs import prepare_inputs
from bench.loadgen import LoadResult, run_load

PY_SPY = systems.ROOT / ".venv-peers" / "bin" / "py-spy"
IDLE = ("wait (threading", "select (", "poll (", "_worker (concurrent", "accept (", "sleep", "epoll", "recv_into (",
        "get (queue", "_recv (multiprocessing", "run_forever", "_run_once", "readinto (socket")


def top_frames(raw: str, count: int) -> list[tuple[str, int, float]]:
    """Collapsed stacks (py-spy --format raw) -> the leaf frames with the most samples, idle waits left out."""
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        leaf = stack.split(";")[-1]
        if any(mark in leaf for mark in IDLE):
            continue
        leaves[leaf] += int(samples)
        total += int(samples)
    return [(frame, n, 100.0 * n / total) for frame, n in leaves.most_common(count)] if total else []


def python_pids(root: int) -> list[int]:
    pids = []
    for pid in server_pids(root):
        try:
            exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        if "python" in Path(exe).name or "ray::" in exe or "triton_python_backend_stub" in exe:
            pids.append(pid)
    return pids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", default="ours", choices=("ours", *systems.PEERS))
    parser.add_argument("--model", type=Path, default=systems.ROOT / "trained_model" / "tomato_leaf_lite0.pt")
    parser.add_argument("--input", default="leaf", choices=("leaf", "phone"), help="the upload (bench/inputs.py)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--raw-dir", type=Path, default=None,
                        help="also keep each process's collapsed stacks here (PID.txt), for inclusive breakdowns")
    parser.add_argument("--perf", action="store_true",
                        help="sample with Linux perf instead of py-spy: CPU per library (ONNX Runtime, the Python "
                             "interpreter, torch, libjpeg, kernel ...) instead of Python frames")
    args = parser.parse_args(argv)
    if args.perf:
        return perf_profile(args)
    if not PY_SPY.exists():
        raise SystemExit(f"{PY_SPY} missing: make peers-venv")
    work = Path(tempfile.mkdtemp(prefix="tomato-profile-"))
    with primed_server(args, work) as (server, data):
        pids = python_pids(server.pid)
        spies = {pid: subprocess.Popen([str(PY_SPY), "record", "--pid", str(pid), "--duration", str(int(args.seconds)),
                                        "--rate", "200", "--nonblocking", "--format", "raw", "--output",
                                        str(work / f"{pid}.txt")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for pid in pids}
        result, cpu = measured_load(server, data, args)
        for spy in spies.values():
            spy.wait(60)
        print(f"{server.label}: {result.throughput:.1f} req/s at {args.clients} clients on the {args.input}, "
              f"p50 {result.p50_ms:.0f} ms; CPU ms per answer {cpu}")
        for pid in pids:
            raw_file = work / f"{pid}.txt"
            if args.raw_dir and raw_file.exists():
                args.raw_dir.mkdir(parents=True, exist_ok=True)
                (args.raw_dir / raw_file.name).write_bytes(raw_file.read_bytes())
            name = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:90].decode(errors="replace") \
                if Path(f"/proc/{pid}").exists() else str(pid)
            frames = top_frames(raw_file.read_text(), args.top) if raw_file.exists() else []
            if frames:
                print(f"\n  process {pid}: {name}")
                for frame, samples, share in frames:
                    print(f"    {share:5.1f} %  {frame}")
    return 0


@contextlib.contextmanager
def primed_server(args: argparse.Namespace, work: Path) -> Iterator[tuple[systems.ServerProcess, bytes]]:
    """The chosen system started as bench.run would, every path primed by 3 s of load on `args.input`; stopped after."""
    data = prepare_inputs(work / "inputs", (args.input,))[args.input].read()
    server = systems.ours(args.model, work) if args.system == "ours" else systems.peer(args.system, args.model, work)
    try:
        server.start().wait_ready(240)
        run_load(server.predict_url, data, args.clients, 3.0, server.build, warmup_s=0)
        yield server, data
    finally:
        server.stop()


def measured_load(server: systems.ServerProcess, data: bytes, args: argparse.Namespace) -> tuple[LoadResult, dict[str, float]]:
    """`args.seconds` of load at `args.clients` clients, and the server's CPU per answer over it (bench/cpu.py)."""
    before = CpuSnapshot.take(server.pid)
    result = run_load(server.predict_url, data, args.clients, args.seconds, server.build, warmup_s=0.5)
    return result, cpu_per_answer_ms(before, CpuSnapshot.take(server.pid), result.completed)


def perf_profile(args: argparse.Namespace) -> int:
    """The same load, with `perf record` on every process of the server: where the CPU goes by shared library."""
    work = Path(tempfile.mkdtemp(prefix="tomato-perf-"))
    with primed_server(args, work) as (server, data):
        pids = ",".join(str(pid) for pid in server_pids(server.pid))
        recording = work / "perf.data"
        perf = subprocess.Popen(["perf", "record", "-F", "499", "-g", "-o", str(recording), "-p", pids, "--",
                                 "sleep", str(int(args.seconds))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        result, cpu = measured_load(server, data, args)
        perf.wait(120)
    print(f"{server.label}: {result.throughput:.1f} req/s at {args.clients} clients; CPU ms per answer {cpu}")
    report = subprocess.run(["perf", "report", "-i", str(recording), "--no-children", "--sort", "dso", "--stdio",
                             "-g", "none"], capture_output=True, text=True).stdout
    shares = [line.strip() for line in report.splitlines() if line.strip() and not line.startswith("#")]
    print("\n".join(f"    {line}" for line in shares[: args.top]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
