"""One command for the whole benchmark: our server vs. the alternatives, same model, image and machine.

    .venv/bin/python -m bench.run --duration 20 --out BENCHMARKS.md

For each system (ours, the seed-tutorial baseline, TorchServe 0.12) it starts the server on free loopback
ports, loads it with 1, 4, 16 and 64 closed-loop clients per input (a 256-px leaf and a 12-MP phone JPEG),
records req/s, p50/p95/p99 latency and errors by status, and stops what it started. Then it measures the
in-process ceiling (no HTTP), the same 16-client comparison in interleaved rounds (on the leaf unless
--interleaved-input says phone), the ceiling variants (bench/ceiling_variants.py) and the locust overload ramp
(bench/overload.py), and writes BENCHMARKS.md plus bench/throughput_latency.png. See bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from bench import systems
from bench.cpu import (CpuSnapshot, cpu_per_answer_ms, machine_busy_s, own_cpu_s, session_memory_kib,
                       session_minor_faults)
from bench.inputs import BenchInput, prepare_inputs
from bench.loadgen import LoadResult, run_load
from model.bundle import file_sha256
from model.hardware import cpu_description

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "trained_model" / "tomato_leaf_lite0.pt"
SYSTEMS = ("ours", "baseline", "torchserve", "ceiling", *systems.PEERS)  # peers: not in the default run (own venv)
DEFAULT_SYSTEMS = ("ours", "baseline", "torchserve", "ceiling")


def bench_server(server: systems.ServerProcess, inputs: dict[str, BenchInput], clients: list[int],
                 duration_s: float, warmup_s: float, ready_timeout_s: float = 240.0) -> list[LoadResult]:
    """Start `server`, run every (input, clients) point, stop it. A server that fails yields error rows."""
    rows: list[LoadResult] = []
    try:
        server.start()
        started = time.time()
        server.wait_ready(ready_timeout_s)
        ready_s = time.time() - started
        if server.expected is not None:  # a peer: refuse to time it unless its answers are ours
            from bench.peers.check import check_answers

            matched = check_answers(server.predict_url, server.build, server.parse_answer, server.expected)
            server.notes.append(f"answers equal to ours on {matched} sample photos (checked before timing)")
            print(f"  {server.name:10s} answers equal to ours on {matched} samples", flush=True)
        for name, item in inputs.items():
            data = item.read()
            # prime every shape/code path once (TorchScript re-optimises per batch shape) before measuring
            run_load(server.predict_url, data, max(clients), min(3.0, warmup_s + 1), server.build, warmup_s=0)
            for count in clients:
                result = run_load(server.predict_url, data, count, duration_s, server.build, warmup_s=warmup_s,
                                  system=server.name, input_name=name)
                result.note = f"ready after {ready_s:.1f}s"
                memory = session_memory_kib(server.pid)
                result.rss_kib, result.pss_kib = memory["rss_kib"], memory["pss_kib"]
                rows.append(result)
                print(f"  {server.name:10s} {name:6s} c={count:3d} {result.throughput:8.1f} req/s "
                      f"p50={_fmt(result.p50_ms)} p99={_fmt(result.p99_ms)} errors={result.errors} "
                      f"RSS={result.rss_kib // 1024} MiB PSS={result.pss_kib // 1024} MiB", flush=True)
            if server.name == "ours" and name == "leaf":
                server.measured["single_client_timing"] = timing = probe_server_timing(server.predict_url, data)
                print(f"  {server.name:10s} single-client timing: {timing}", flush=True)
    except Exception as exc:  # keep going with the other systems; the report says what happened
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        print(f"  {server.name}: FAILED {reason}\n{server.log_tail(2000)}", file=sys.stderr, flush=True)
        rows.append(LoadResult(server.name, "-", 0, duration_s, 0, {"failed": 1}, note=reason))
    finally:
        server.stop()
    return rows


def probe_server_timing(url: str, data: bytes, count: int = 300) -> dict[str, float]:
    """One client, `count` sequential predictions: p50 of the client's latency and of the timings our server
    reports in each answer (total inside Flask; decode + preprocess, queue, forward), to show where a single
    request's time goes."""
    from statistics import median

    import urllib3

    from bench.loadgen import multipart_file

    target = urllib3.util.parse_url(url)
    pool = urllib3.HTTPConnectionPool(target.host, target.port, maxsize=1, retries=False, timeout=30.0)
    samples: list[tuple[float, ...]] = []
    for i in range(count + 20):
        body, headers = multipart_file(data)
        sent = time.perf_counter()
        response = pool.urlopen("POST", target.path, body=body, headers=headers)
        client_ms = (time.perf_counter() - sent) * 1000
        answer = json.loads(response.data)
        timing = answer["predictions"][0]["timing_ms"]
        if i >= 20:  # the first answers warm connections and caches
            samples.append((client_ms, answer["timing_ms"]["total"], timing["decode"], timing["queue"],
                            timing["inference"]))
    pool.close()
    keys = ("client_ms", "server_total_ms", "decode_preprocess_ms", "queue_ms", "forward_ms")
    return {key: round(median(column), 2) for key, column in zip(keys, zip(*samples))}


def make_server(name: str, args: argparse.Namespace, work: Path, ours_env: dict[str, str]) -> systems.ServerProcess:
    """The ServerProcess for one system key, configured from the command line (not started)."""
    work.mkdir(parents=True, exist_ok=True)
    if name == "ours":
        return systems.ours(args.model, work, ours_env, experiment=shlex.split(args.ours_experiment))
    if name == "baseline":
        return systems.baseline(args.model, work, args.baseline_server)
    if name in systems.PEERS:
        return systems.peer(name, args.model, work)
    return systems.torchserve(args.model, work, args.ts_batch_size, args.ts_max_batch_delay, args.ts_workers,
                              stock_transform=args.ts_stock_transform)


def interleaved_rounds(servers: list[systems.ServerProcess], model: Path, item: BenchInput, clients: int,
                       ceiling_batch: int, rounds: int, duration_s: float, warmup_s: float, work: Path,
                       ceiling_processes: int = 1) -> list[dict]:
    """The headline comparison again, with every system measured in turn, `rounds` times over.

    On a shared VM the CPU available to us drifts by tens of percent from one minute to the next, so two systems
    measured minutes apart can differ by the drift alone. Here all servers are up at once (idle ones cost next to
    nothing) and each round measures every one of them, then the no-HTTP ceiling (batch `ceiling_batch`, 0 =
    skip), back to back: a ratio taken within one round compares like with like. One row per (round, system),
    with the CPU milliseconds each answer cost the server, the load generator and the whole machine (bench/cpu.py;
    for the ceiling, whose processes keep every core busy: cores / images per second), the server's minor page
    faults per answer and its PSS right after its turn."""
    from bench.ceiling_variants import run_variants

    data = item.read()
    out: list[dict] = []
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready(240.0)
            if server.expected is not None:  # a peer is timed only while its answers are ours (raises otherwise)
                from bench.peers.check import check_answers

                check_answers(server.predict_url, server.build, server.parse_answer, server.expected)
            run_load(server.predict_url, data, clients, 3.0, server.build, warmup_s=0)  # prime every path
        for number in range(1, rounds + 1):
            for server in servers:
                before, faults_before = CpuSnapshot.take(server.pid), session_minor_faults(server.pid)
                result = run_load(server.predict_url, data, clients, duration_s, server.build, warmup_s=warmup_s,
                                  system=server.name, input_name=item.name)
                cpu = cpu_per_answer_ms(before, CpuSnapshot.take(server.pid), result.completed)
                faults = (session_minor_faults(server.pid) - faults_before) / max(1, result.completed)
                out.append({"round": number, "system": server.name, "throughput": result.throughput,
                            "p50_ms": result.p50_ms, "errors": result.error_count, **cpu,
                            "minor_faults": round(faults, 1),
                            "pss_mib": session_memory_kib(server.pid)["pss_kib"] // 1024})
                print(f"  round {number} {server.name:10s} {result.throughput:8.1f} req/s  CPU ms/answer {cpu}",
                      flush=True)
            if ceiling_batch:
                measured = run_variants(["served"], model, {"leaf": item.path}, [ceiling_batch], duration_s, work,
                                        processes=ceiling_processes)
                if measured and "error" not in measured[0]:
                    rate = measured[0]["images_per_s"]
                    out.append({"round": number, "system": "ceiling", "throughput": rate, "p50_ms": None,
                                "errors": 0, "machine_cpu_ms": round(1000.0 * (os.cpu_count() or 1) / rate, 3)})
                    print(f"  round {number} ceiling    {rate:8.1f} img/s", flush=True)
    except Exception as exc:  # the rest of the report still stands; say what happened
        print(f"  interleaved rounds stopped: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    finally:
        for server in servers:
            server.stop()
    return out


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}ms"


def ceiling_rows(model: Path, inputs: dict[str, BenchInput], clients: list[int], max_batch: int,
                 duration_s: float, work: Path, nice: int, processes: int = 1) -> list[LoadResult]:
    """No-HTTP ceiling at the batch size each concurrency allows (min(clients, max batch)), as images/s, in
    `processes` processes at once (the server's layout)."""
    from bench.ceiling_variants import run_variants

    batches = sorted({min(c, max_batch) for c in clients})
    measured = run_variants(["served"], model, {k: v.path for k, v in inputs.items()}, batches, duration_s,
                            work / "ceiling", nice=nice, processes=processes)
    if measured and "error" in measured[0]:
        return [LoadResult("ceiling", "-", 0, duration_s, 0, {"failed": 1}, note=measured[0]["error"])]
    by_key = {(r["input"], r["batch"]): r for r in measured}
    rows = []
    for name in inputs:
        for count in clients:
            r = by_key[(name, min(count, max_batch))]
            rows.append(LoadResult("ceiling", name, count, duration_s, r["images"], {}, r["images_per_s"],
                                   note=f"batch {r['batch']}"))
    return rows


def machine_info() -> dict:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kib = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
    cpu = cpu_description(cores=False)  # names AVX-512/AVX2: same-named hosts here differ threefold in speed
    try:
        import subprocess

        java = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30).stderr.splitlines()[0]
    except Exception:
        java = "not found"
    return {
        "cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "os": platform.platform(), "python": platform.python_version(), "java": java,
        "loadavg_at_start": os.getloadavg(),
        **{pkg: ver(pkg) for pkg in ("torch", "torchvision", "flask", "gunicorn", "pillow", "urllib3", "torchserve",
                                     "torch-model-archiver", "onnxruntime", "onnx", "locust", "matplotlib")},
    }


def parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key.startswith(("TOMATO_", "OMP_", "MKL_")):
            raise SystemExit(f"--ours-env takes TOMATO_*/OMP_*/MKL_*=VALUE, got {item!r}")
        env[key] = value
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model bundle (.pt) every system serves")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per (system, input, clients)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each point")
    parser.add_argument("--clients", default="1,4,16,64", help="concurrency levels")
    parser.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS),
                        help=f"subset of {','.join(SYSTEMS)} (the peers need `make peers-venv`)")
    parser.add_argument("--inputs", default="leaf,phone", help="subset of leaf,phone")
    parser.add_argument("--baseline-server", choices=("gunicorn", "flask"), default="gunicorn")
    parser.add_argument("--ours-env", action="append", default=[], metavar="TOMATO_X=V",
                        help="knob for our server (repeatable), e.g. TOMATO_BATCH_WAIT_MS=5")
    parser.add_argument("--ours-experiment", default="", metavar="ARGS",
                        help='run ours through bench/ours_experimental.py, e.g. "--forward torchscript"')
    parser.add_argument("--ts-batch-size", type=int, default=16)
    parser.add_argument("--ts-workers", type=int, default=1, help="TorchServe backend worker processes")
    parser.add_argument("--ts-max-batch-delay", type=int, default=5, help="TorchServe maxBatchDelay (ms)")
    parser.add_argument("--ts-stock-transform", action="store_true", help="TorchServe with the ImageNet transform")
    parser.add_argument("--interleaved-rounds", type=int, default=3,
                        help="rounds of the comparison at --interleaved-clients on --interleaved-input with every "
                             "system in turn (0: off)")
    parser.add_argument("--interleaved-input", default="leaf", choices=("leaf", "phone"),
                        help="the input of the interleaved rounds (one of --inputs)")
    parser.add_argument("--interleaved-clients", type=int, default=16)
    parser.add_argument("--interleaved-duration", type=float, default=10.0, help="seconds per system per round")
    parser.add_argument("--ceiling-processes", type=int, default=0,
                        help="processes the ceiling runs in at once (default: as many workers as our server runs, "
                             "--ours-experiment's --workers included)")
    parser.add_argument("--variants", default="all", help="ceiling variants to measure: all, none, or a list")
    parser.add_argument("--variant-duration", type=float, default=8.0, help="seconds per variant/input/batch")
    parser.add_argument("--overload", default="200,20,60", help="locust USERS,RATE,SECONDS, or 'none'")
    parser.add_argument("--overload-rounds", type=int, default=2, help="ramps on the same server (RSS plateau vs. leak)")
    parser.add_argument("--nice", type=int, default=0, help="run every process we start under nice -n N")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--chart", type=Path, default=ROOT / "bench" / "throughput_latency.png")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    parser.add_argument("--work", type=Path, default=None, help="temp folder (default: a new one in /tmp)")
    args = parser.parse_args(argv)

    from bench import overload, report
    from bench.ceiling_variants import DEFAULT_VARIANTS, run_variants

    if args.nice:
        os.nice(args.nice)  # children inherit it
    if not args.model.is_file():
        raise SystemExit(f"model bundle not found: {args.model}")
    work = args.work or Path(tempfile.mkdtemp(prefix="tomato-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    clients = [int(c) for c in args.clients.split(",")]
    chosen = [s for s in args.systems.split(",") if s]
    unknown = set(chosen) - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"unknown systems {sorted(unknown)}")
    ours_env = parse_env(args.ours_env)
    from flask_server import DEFAULTS

    max_batch = int(ours_env.get("TOMATO_MAX_BATCH_SIZE", DEFAULTS["MAX_BATCH_SIZE"]))
    ceiling_processes = args.ceiling_processes or systems.our_worker_count(shlex.split(args.ours_experiment))
    started = time.time()
    busy_start, own_start = machine_busy_s(), own_cpu_s()
    info = machine_info()
    if any(name in systems.PEERS for name in chosen):
        info["peers_venv"] = systems.peer_versions()
        if "pytriton" in chosen:
            info["pytriton_venv"] = systems.peer_versions(systems.PYTRITON_PYTHON)
    inputs = prepare_inputs(work / "inputs", tuple(args.inputs.split(",")))
    print(f"work dir {work}; inputs: " + "; ".join(f"{k}: {v.describe()}" for k, v in inputs.items()), flush=True)

    rows: list[LoadResult] = []
    notes: dict[str, list[str]] = {}
    measured: dict[str, dict] = {}  # extra measurements systems report, e.g. our server's single-client timing
    for name in chosen:
        if name == "ceiling":
            continue
        try:
            server = make_server(name, args, work, ours_env)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            print(f"  {name}: could not be prepared: {reason}", file=sys.stderr, flush=True)
            rows.append(LoadResult(name, "-", 0, args.duration, 0, {"failed": 1}, note=reason[:500]))
            continue
        notes[name] = server.notes
        print(f"{server.label}: {'; '.join(server.notes)}", flush=True)
        rows.extend(bench_server(server, inputs, clients, args.duration, args.warmup))
        measured.update(server.measured)
    if "ceiling" in chosen:
        print("no-HTTP ceiling ...", flush=True)
        rows.extend(ceiling_rows(args.model, inputs, clients, max_batch, min(args.duration, 10.0), work, 0,
                                 ceiling_processes))
        threads = max(1, (os.cpu_count() or 1) // ceiling_processes)
        notes["ceiling"] = [f"decode + preprocess + one forward of min(clients, {max_batch}) images + postprocess, "
                            f"no HTTP, in {ceiling_processes} process(es) at once with {threads} torch thread(s) each "
                            "(the server's own layout), one thread driving each; images/s summed"]

    interleaved: list[dict] = []
    if args.interleaved_rounds and args.interleaved_input in inputs:
        print(f"interleaved rounds at {args.interleaved_clients} clients ...", flush=True)
        servers = []
        for name in (s for s in chosen if s != "ceiling"):
            try:
                servers.append(make_server(name, args, work / "interleaved", ours_env))
            except Exception as exc:
                print(f"  {name}: left out of the interleaved rounds: {exc}", file=sys.stderr, flush=True)
        interleaved = interleaved_rounds(servers, args.model, inputs[args.interleaved_input],
                                         args.interleaved_clients, max_batch if "ceiling" in chosen else 0,
                                         args.interleaved_rounds,
                                         args.interleaved_duration, args.warmup, work / "interleaved",
                                         ceiling_processes)

    variant_rows: list[dict] = []
    if args.variants != "none":
        names = list(DEFAULT_VARIANTS) if args.variants == "all" else args.variants.split(",")
        print(f"ceiling variants {names} ...", flush=True)
        variant_rows = run_variants(names, args.model, {k: v.path for k, v in inputs.items()}, [1, max_batch],
                                    args.variant_duration, work / "variants")

    overload_summary = None
    if args.overload != "none":
        users, rate, seconds = (int(x) for x in args.overload.split(","))
        print(f"locust overload ramp: {users} users at {rate}/s for {seconds}s ...", flush=True)
        overload_summary = overload.run_overload(args.model, inputs["leaf"].path, work / "overload", users, rate,
                                                 seconds, ours_env, rounds=args.overload_rounds)

    foreign_s = max(0.0, (machine_busy_s() - busy_start) - (own_cpu_s() - own_start))
    elapsed = time.time() - started
    info["foreign_cpu_s"] = round(foreign_s)  # CPU used by processes this run did not start
    info["foreign_cpu_share"] = round(foreign_s / (elapsed * (os.cpu_count() or 1)), 3)
    info["loadavg_at_end"] = os.getloadavg()
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "-m", "bench.run", *(argv or sys.argv[1:])])
    results = {
        "command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "elapsed_s": round(time.time() - started), "machine": info, "model": str(args.model),
        "model_sha256": file_sha256(args.model)[:12], "inputs": {k: v.describe() for k, v in inputs.items()},
        "clients": clients, "duration_s": args.duration, "warmup_s": args.warmup, "notes": notes,
        "ours_env": ours_env, "max_batch": max_batch, "rows": [asdict(r) for r in rows],
        "variants": variant_rows, "overload": overload_summary, "interleaved": interleaved,
        "interleaved_clients": args.interleaved_clients,
        "interleaved_input": args.interleaved_input, **measured,
    }
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    (work / "results.json").write_text(json.dumps(results, indent=1))
    if args.chart:
        report.plot(results, args.chart)
    report.write_markdown(results, args.out, chart=args.chart)
    print(f"wrote {args.out}" + (f" and {args.chart}" if args.chart else "") + f"; raw results {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
