"""Quick smoke of the benchmark runner (bench/): real server, tiny model, seconds not minutes.

No timing assertions: only that the runner measures something, counts errors, stops what it started,
and that the report writer produces the tables and the chart.
"""
from __future__ import annotations

import os
from dataclasses import asdict

from bench import ab, report, systems
from bench.inputs import prepare_inputs
from bench.loadgen import LoadResult, percentile
from bench.run import bench_server, interleaved_rounds


def test_runner_measures_our_server_and_stops_it(tiny_bundle_path, tmp_path):
    inputs = prepare_inputs(tmp_path / "inputs", ("leaf",))
    server = systems.ours(tiny_bundle_path, tmp_path, {"TOMATO_TORCH_THREADS": "1"})
    rows = bench_server(server, inputs, clients=[1, 4], duration_s=2.0, warmup_s=0.5)

    assert server.process is not None and server.process.poll() is not None, "the runner must stop the server"
    assert [(r.system, r.input, r.clients) for r in rows] == [("ours", "leaf", 1), ("ours", "leaf", 4)], rows
    for row in rows:
        assert row.throughput > 0, row
        assert row.errors == {}, row
        assert row.p50_ms is not None and row.p50_ms <= row.p95_ms <= row.p99_ms <= row.max_ms


def test_interleaved_rounds_measure_every_server_each_round_and_stop_them(tiny_bundle_path, tmp_path):
    inputs = prepare_inputs(tmp_path / "inputs", ("leaf",))
    server = systems.ours(tiny_bundle_path, tmp_path, {"TOMATO_TORCH_THREADS": "1"})
    rows = interleaved_rounds([server], tiny_bundle_path, inputs["leaf"], clients=2, ceiling_batch=0, rounds=2,
                              duration_s=1.0, warmup_s=0.2, work=tmp_path / "interleaved")

    assert server.process is not None and server.process.poll() is not None, "the rounds must stop the server"
    assert [(r["round"], r["system"]) for r in rows] == [(1, "ours"), (2, "ours")], rows
    assert all(r["throughput"] > 0 and r["errors"] == 0 for r in rows), rows
    for row in rows:  # the server's own CPU and the load generator's, per answer, are both real and part of the whole
        assert row["server_cpu_ms"] > 0 and row["client_cpu_ms"] > 0, row
        assert row["machine_cpu_ms"] >= 0.8 * (row["server_cpu_ms"] + row["client_cpu_ms"]), row
        assert row["minor_faults"] >= 0 and row["pss_mib"] > 0, row  # read while the server was still up


def test_ab_measures_two_settings_of_our_server_in_turns(tiny_bundle_path):
    summaries = ab.compare(["TOMATO_TORCH_THREADS=1", "TOMATO_TORCH_THREADS=1 TOMATO_MEMORY_GUARD=off"], "leaf",
                           clients=2, rounds=2, seconds=1.0, model=tiny_bundle_path)

    assert [s.config for s in summaries] == ["TOMATO_TORCH_THREADS=1",
                                             "TOMATO_TORCH_THREADS=1 TOMATO_MEMORY_GUARD=off"]
    for summary in summaries:
        assert len(summary.rounds) == 2, summary
        assert all(throughput > 0 and cpu_ms > 0 and faults >= 0 for throughput, cpu_ms, faults in summary.rounds)
        assert summary.pss_mib > 0  # read while the server was still up


def test_session_cpu_counts_every_process_of_a_server_session():
    """A parent and its child each spend ~0.3 s of CPU, then idle: both count for the parent's session."""
    import subprocess
    import sys
    import time

    from bench.cpu import session_cpu_s

    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\ntime.sleep(30)\n"
    script = f"import subprocess, sys\nchild = subprocess.Popen([sys.executable, '-c', {burn!r}])\n{burn}"
    process = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        deadline = time.time() + 20
        while (used := session_cpu_s(process.pid)) < 0.6 and time.time() < deadline:
            time.sleep(0.2)
        assert session_cpu_s(process.pid + 10_000_000) == 0.0  # no such session
    finally:
        os.killpg(process.pid, 9)
        process.wait()
    assert 0.6 <= used <= 3.0, used  # two burns (+ interpreter start-up); one process alone cannot get there


def test_ceiling_runs_copies_together_and_adds_them_up(tiny_bundle_path, tmp_path):
    from bench.ceiling_variants import run_variants

    inputs = {k: v.path for k, v in prepare_inputs(tmp_path / "inputs", ("leaf",)).items()}
    rows = run_variants(["served"], tiny_bundle_path, inputs, [1, 2], 0.5, tmp_path / "ceiling", processes=2)

    assert [(r["input"], r["batch"], r["processes"], r["torch_threads"]) for r in rows] == [
        ("leaf", 1, 2, max(1, (os.cpu_count() or 1) // 2)), ("leaf", 2, 2, max(1, (os.cpu_count() or 1) // 2))], rows
    assert all(r["images"] > 0 and r["images_per_s"] > 0 for r in rows), rows
    assert sorted(p.name for p in (tmp_path / "ceiling" / "barrier-served-2").iterdir()) == ["go", "ready-0", "ready-1"]


def test_runner_reports_a_server_that_cannot_start(tmp_path):
    missing = tmp_path / "no-such-model.pt"
    inputs = prepare_inputs(tmp_path / "inputs", ("leaf",))
    rows = bench_server(systems.baseline(missing, tmp_path), inputs, clients=[1], duration_s=1.0, warmup_s=0.1,
                        ready_timeout_s=60)
    assert len(rows) == 1 and rows[0].errors == {"failed": 1} and rows[0].note


def test_percentile_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert percentile([], 50) is None


def test_report_writes_tables_targets_and_chart(tmp_path):
    rows = []
    for system, tput in (("ours", 40.0), ("baseline", 15.0), ("torchserve", 20.0), ("ceiling", 44.0)):
        for clients in (1, 16, 64):
            p = None if system == "ceiling" else 100.0
            rows.append(asdict(LoadResult(system, "leaf", clients, 2.0, int(tput * 2), {"429": 3} if clients == 64 and
                                          system == "ours" else {}, tput, p, p, p, p)))
    results = {
        "command": "python -m bench.run --duration 2", "started": "today", "elapsed_s": 60,
        "machine": {"cpu": "test cpu", "cores": 2, "ram_gib": 1.0, "os": "linux", "loadavg_at_start": (0.1, 0.1, 0.1),
                    "python": "3", "java": "java", **{k: "1" for k in ("torch", "torchvision", "flask", "gunicorn",
                    "pillow", "requests", "torchserve", "torch-model-archiver", "onnxruntime", "onnx", "locust")}},
        "model": "tiny.pt", "model_sha256": "abc", "inputs": {"leaf": "256x256 JPEG"}, "clients": [1, 16, 64],
        "duration_s": 2.0, "warmup_s": 1.0, "notes": {"ours": ["gunicorn"]}, "rows": rows,
        "variants": [{"variant": "eager", "input": "leaf", "batch": 16, "images": 10, "images_per_s": 44.0,
                      "decode_ms_per_image": 1.0, "preprocess_ms_per_image": 1.0, "forward_ms_per_image": 20.0,
                      "postprocess_ms_per_image": 0.1, "setup_s": 1.0},
                     {"variant": "compile", "error": "no compiler"}],
        "overload": None,
    }
    out = tmp_path / "BENCHMARKS.md"
    out.write_text(f"old\n{report.NOTES_START}\nkeep me\n{report.NOTES_END}\n")
    chart = tmp_path / "chart.png"
    report.plot(results, chart)
    text = report.write_markdown(results, out, chart)

    assert chart.stat().st_size > 1000
    assert "| ours (flask_server.py) | 16 | 40.0 |" in text
    assert "| leaf | 40.0 | 15.0 | 20.0 | 44.0 | 2.67× | 2.00× | 0.91× |" in text
    assert "429: 3" in text and "keep me" in text and "chart.png" in text
    assert "| compile | – | – | failed |" in text
    assert "Not measured in this run" in text


def test_report_takes_the_median_of_the_interleaved_ratios():
    rounds = {1: (100.0, 50.0, 40.0, 125.0), 2: (90.0, 30.0, 60.0, 100.0), 3: (120.0, 40.0, 40.0, 200.0)}
    results = {"interleaved_clients": 16, "rows": [], "inputs": {}, "variants": [], "interleaved": [
        {"round": n, "system": system, "throughput": value, "p50_ms": None, "errors": 0}
        for n, values in rounds.items() for system, value in zip(("ours", "baseline", "torchserve", "ceiling"), values)]}
    ratios = report.interleaved_ratios(results)
    assert ratios == {"baseline": [2.0, 3.0, 3.0], "torchserve": [2.5, 1.5, 3.0], "ceiling": [0.8, 0.9, 0.6]}
    section = "\n".join(report.interleaved_section(results))
    assert "| 2 | 90.0 | 30.0 | 60.0 | 100.0 | 3.00× | 1.50× | 0.90× |" in section
    assert "**3.00×** | **2.50×** | **0.80×**" in section
    target_rows = "\n".join(report.targets(results))
    assert "2× TorchServe 0.12 at 16 clients, interleaved rounds (median of 3: 2.50×, 1.50×, 3.00×) | leaf | 2.50× | **yes**" in target_rows
    assert "85 % of the no-HTTP ceiling at 16 clients, interleaved rounds (median of 3: 80%, 90%, 60%) | leaf | 80% | **no**" in target_rows


def test_report_names_the_input_of_the_interleaved_rounds():
    """`--interleaved-input phone`: the section and the target rows say phone, not leaf."""
    results = {"interleaved_clients": 16, "interleaved_input": "phone", "rows": [], "inputs": {}, "variants": [],
               "interleaved": [{"round": 1, "system": system, "throughput": value, "p50_ms": None, "errors": 0}
                               for system, value in (("ours", 30.0), ("baseline", 10.0))]}
    assert "\n".join(report.interleaved_section(results)).startswith("Phone at 16 clients;")
    assert "interleaved rounds (median of 1: 3.00×) | phone | 3.00× | **yes**" in "\n".join(report.targets(results))


def test_report_shows_the_median_cpu_per_answer():
    rows = [{"round": n, "system": "ours", "throughput": 400.0, "p50_ms": 40.0, "errors": 0,
             "server_cpu_ms": server, "client_cpu_ms": 0.3, "machine_cpu_ms": server + 0.4}
            for n, server in ((1, 4.0), (2, 5.0), (3, 4.2))]
    rows.append({"round": 1, "system": "ceiling", "throughput": 600.0, "p50_ms": None, "errors": 0,
                 "machine_cpu_ms": 3.333})
    section = "\n".join(report.interleaved_section({"interleaved_clients": 16, "interleaved": rows}))
    assert "| ours | 4.20 | 0.30 | 4.60 |" in section
    assert "| no-HTTP ceiling | – | – | 3.33 |" in section
