"""Turn bench.run's results into BENCHMARKS.md and the throughput/latency chart.

    python -m bench.report /tmp/tomato-bench-XXXX/results.json --out BENCHMARKS.md   # re-render without re-measuring

Text between `<!-- notes:start -->` and `<!-- notes:end -->` in an existing report is kept on re-render.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

LABELS = {"ours": "ours (flask_server.py)", "baseline": "seed-tutorial baseline", "torchserve": "TorchServe 0.12",
          "ceiling": "no-HTTP ceiling (images/s)", "litserve": "LitServe", "rayserve": "Ray Serve", "bentoml": "BentoML",
          "pytriton": "PyTriton (Triton)"}
ORDER = ("ours", "baseline", "torchserve", "litserve", "rayserve", "bentoml", "pytriton", "ceiling")
NOTES_START, NOTES_END = "<!-- notes:start -->", "<!-- notes:end -->"
DEADLINE_S = 10.0  # flask_server.py DEFAULTS["REQUEST_TIMEOUT_S"]
QUEUE_BOUND = 64  # flask_server.py DEFAULTS["MAX_QUEUE"]


def _ms(value) -> str:
    return "–" if value is None else (f"{value:.0f}" if value >= 100 else f"{value:.1f}")


def _errors(errors: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in errors.items()) if errors else "0"


def _ratio(a: float | None, b: float | None) -> str:
    return "–" if not a or not b else f"{a / b:.2f}×"


def find(rows: list[dict], system: str, input_name: str, clients: int) -> dict | None:
    return next((r for r in rows if r["system"] == system and r["input"] == input_name and r["clients"] == clients),
                None)


def results_table(rows: list[dict]) -> list[str]:
    """Markdown table of load results: one line per (system, clients)."""
    memory = any(r.get("pss_kib") for r in rows)  # runs before issue 19 did not record it
    lines = ["| system | clients | req/s | p50 ms | p95 ms | p99 ms | errors (by status) |"
             + (" RSS MiB | PSS MiB |" if memory else ""),
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |" + (" ---: | ---: |" if memory else "")]
    for r in sorted(rows, key=lambda r: (ORDER.index(r["system"]) if r["system"] in ORDER else 9, r["clients"])):
        if r["system"] == "ceiling":
            lines.append(f"| {LABELS['ceiling']} | {r['clients']} | {r['throughput']:.1f} img/s | – | – | – | "
                         f"({r.get('note', '')}) |" + (" – | – |" if memory else ""))
        else:
            mib = lambda k: f"{r[k] / 1024:.0f}" if r.get(k) else "–"  # noqa: E731
            lines.append(f"| {LABELS.get(r['system'], r['system'])} | {r['clients']} | {r['throughput']:.1f} | "
                         f"{_ms(r['p50_ms'])} | {_ms(r['p95_ms'])} | {_ms(r['p99_ms'])} | {_errors(r['errors'])} |"
                         + (f" {mib('rss_kib')} | {mib('pss_kib')} |" if memory else ""))
    return lines


def _failures(rows: list[dict]) -> list[str]:
    return [f"- **{LABELS.get(r['system'], r['system'])} did not run**: {r.get('note', '')}"
            for r in rows if r["errors"].get("failed") and r["clients"] == 0]


def targets(results: dict) -> list[str]:
    rows = results["rows"]
    inputs = list(results["inputs"])
    lines = ["| target | input | measured | met |", "| --- | --- | --- | --- |"]

    def mark(ok: bool | None) -> str:
        return "n/a" if ok is None else ("**yes**" if ok else "**no**")

    for name in inputs:
        ours, ceiling = find(rows, "ours", name, 16), find(rows, "ceiling", name, 16)
        if ours and ceiling and ceiling["throughput"]:
            share = ours["throughput"] / ceiling["throughput"]
            lines.append(f"| ours ≥ 85 % of the no-HTTP ceiling at 16 clients | {name} | {share:.0%} "
                         f"({ours['throughput']:.1f} req/s vs {ceiling['throughput']:.1f} img/s) | {mark(share >= 0.85)} |")
        for peer in ("baseline", "torchserve"):
            other = find(rows, peer, name, 16)
            if ours and other and other["throughput"]:
                ratio = ours["throughput"] / other["throughput"]
                lines.append(f"| ours ≥ 2× {LABELS[peer]} at 16 clients | {name} | {ratio:.2f}× | {mark(ratio >= 2)} |")
        below = [r for r in rows if r["system"] == "ours" and r["input"] == name and 0 < r["clients"] <= QUEUE_BOUND]
        if below:
            errs = {c: r["errors"] for r in below if (c := r["clients"]) and r["errors"]}
            lines.append(f"| no errors below the queue bound ({QUEUE_BOUND}) | {name} | "
                         f"{'none' if not errs else errs} | {mark(not errs)} |")
        top = find(rows, "ours", name, 64)
        if top and top["p99_ms"] is not None:
            timeouts = sum(v for k, v in top["errors"].items() if k in ("504", "timeout"))
            ok = top["p99_ms"] <= DEADLINE_S * 1000 and timeouts == 0
            lines.append(f"| p99 at 64 clients within the {DEADLINE_S:.0f} s deadline, no timeouts | {name} | "
                         f"p99 {top['p99_ms']:.0f} ms, timeouts {timeouts} | {mark(ok)} |")
    ratios = interleaved_ratios(results)
    for peer, ratio in ratios.items():
        median, wanted = _median(ratio), (0.85 if peer == "ceiling" else 2.0)
        what = "85 % of the no-HTTP ceiling" if peer == "ceiling" else f"2× {LABELS[peer]}"
        shown = f"{median:.0%}" if peer == "ceiling" else f"{median:.2f}×"
        spread = ", ".join(f"{r:.0%}" if peer == "ceiling" else f"{r:.2f}×" for r in ratio)
        lines.append(f"| ours ≥ {what} at {results.get('interleaved_clients', 16)} clients, interleaved rounds "
                     f"(median of {len(ratio)}: {spread}) | {results.get('interleaved_input', 'leaf')} | {shown} | "
                     f"{mark(median >= wanted)} |")
    served = {(r["input"], r["batch"]): r for r in results.get("variants") or [] if r.get("variant") == "served"}
    single = find(rows, "ours", "leaf", 1)
    if single and single["p50_ms"] is not None and ("leaf", 1) in served:
        forward_ms = served[("leaf", 1)]["forward_ms_per_image"]
        inside = results.get("single_client_timing")
        where = "" if not inside else (
            f"; inside the server (its own timings, p50): {inside['server_total_ms']:.1f} ms = decode + preprocess "
            f"{inside['decode_preprocess_ms']:.1f}, forward {inside['forward_ms']:.1f}, queue {inside['queue_ms']:.1f}, "
            f"rest Flask/multipart/JSON")
        lines.append(f"| single-client p50 ≤ model forward + 5 ms | leaf | p50 {single['p50_ms']:.1f} ms, forward "
                     f"{forward_ms:.1f} ms (served engine, batch 1, in-process){where} | "
                     f"{mark(single['p50_ms'] <= forward_ms + 5)} |")
    phone = find(rows, "ours", "phone", 1)
    if phone and phone["p50_ms"] is not None:
        lines.append(f"| 12-MP phone JPEG answered in ≤ 150 ms (single client, p50) | phone | {phone['p50_ms']:.0f} ms | "
                     f"{mark(phone['p50_ms'] <= 150)} |")
    overload = results.get("overload")
    if overload and not overload.get("error"):
        timeouts = overload["by_status"].get("504", 0) + overload["by_status"].get("timeout", 0)
        shed = overload["by_status"].get("429", 0) > 0
        ok = (overload["p99_ok_ms_max"] is not None and overload["p99_ok_ms_max"] <= DEADLINE_S * 1000
              and timeouts == 0 and shed)
        lines.append(f"| overload ({overload['users']} users): sheds with 429s, no timeouts, p99 bounded | leaf | "
                     f"429s: {overload['by_status'].get('429', 0)}, timeouts: {timeouts}, worst 1-s p99 "
                     f"{_ms(overload['p99_ok_ms_max'])} ms | {mark(ok)} |")
    return lines


def interleaved_ratios(results: dict) -> dict[str, list[float]]:
    """ours / peer within each interleaved round, per peer (rounds where both were measured)."""
    by_round: dict[int, dict[str, float]] = {}
    for r in results.get("interleaved") or []:
        by_round.setdefault(r["round"], {})[r["system"]] = r["throughput"]
    ratios: dict[str, list[float]] = {}
    for measured in by_round.values():
        for peer in ("baseline", "torchserve", "ceiling"):
            if measured.get("ours") and measured.get(peer):
                ratios.setdefault(peer, []).append(measured["ours"] / measured[peer])
    return ratios


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def interleaved_section(results: dict) -> list[str]:
    rows = results.get("interleaved") or []
    if not rows:
        return ["Not measured in this run (`--interleaved-rounds 0`)."]
    clients = results.get("interleaved_clients", 16)
    systems = [s for s in ORDER if any(r["system"] == s for r in rows)]
    head = " | ".join(("ceiling img/s" if s == "ceiling" else f"{LABELS[s].split(' (')[0]} req/s") for s in systems)
    peers = [p for p in ("baseline", "torchserve", "ceiling") if p in systems and "ours" in systems]
    item = results.get("interleaved_input", "leaf").capitalize()
    lines = [f"{item} at {clients} clients; all servers up at once, each round measures every system back to back "
             "(ceiling last), so the ratios inside a round share the same machine conditions.", "",
             f"| round | {head} | " + " | ".join(f"ours/{LABELS[p].split(' (')[0]}" for p in peers) + " |",
             "| ---: |" + " ---: |" * (len(systems) + len(peers))]
    for number in sorted({r["round"] for r in rows}):
        got = {r["system"]: r["throughput"] for r in rows if r["round"] == number}
        cells = [f"{got[s]:.1f}" if s in got else "–" for s in systems]
        cells += [_ratio(got.get("ours"), got.get(p)) for p in peers]
        lines.append(f"| {number} | " + " | ".join(cells) + " |")
    ratios = interleaved_ratios(results)
    lines.append("| median | " + " | ".join("" for _ in systems) + " | "
                 + " | ".join(f"**{_median(ratios[p]):.2f}×**" if p in ratios else "–" for p in peers) + " |")
    return lines + cpu_per_answer_section(rows, systems)


def cpu_per_answer_section(rows: list[dict], systems: list[str]) -> list[str]:
    """Median CPU milliseconds per answer over the rounds (bench/cpu.py): where each system's time goes."""
    keys = ("server_cpu_ms", "client_cpu_ms", "machine_cpu_ms")
    if not any(key in r for r in rows for key in keys):
        return []
    lines = ["", "CPU per answer in the same rounds (median; `bench/cpu.py`). With every core busy, throughput is "
             "cores × 1000 / the whole machine's CPU ms per answer, so these columns say where the gap to the "
             "ceiling goes. For the ceiling, whose processes keep every core busy, the figure is cores / images per "
             "second.", "",
             "| system | server processes ms | load generator ms | whole machine ms |", "| --- | ---: | ---: | ---: |"]
    for system in systems:
        cells = []
        for key in keys:
            values = [r[key] for r in rows if r["system"] == system and r.get(key) is not None]
            cells.append(f"{_median(values):.2f}" if values else "–")
        lines.append(f"| {LABELS[system].split(' (')[0]} | " + " | ".join(cells) + " |")
    return lines


def summary_16(results: dict) -> list[str]:
    rows = results["rows"]
    lines = ["| input | ours req/s | baseline req/s | TorchServe req/s | ceiling img/s | ours/baseline | "
             "ours/TorchServe | ours/ceiling |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in results["inputs"]:
        t = {s: (find(rows, s, name, 16) or {}).get("throughput") for s in ORDER}
        cell = lambda v: "–" if v is None else f"{v:.1f}"  # noqa: E731
        lines.append(f"| {name} | {cell(t['ours'])} | {cell(t['baseline'])} | {cell(t['torchserve'])} | "
                     f"{cell(t['ceiling'])} | {_ratio(t['ours'], t['baseline'])} | {_ratio(t['ours'], t['torchserve'])} | "
                     f"{_ratio(t['ours'], t['ceiling'])} |")
    return lines


def variants_table(variant_rows: list[dict]) -> list[str]:
    if not variant_rows:
        return ["(not measured in this run)"]
    eager = {(r["input"], r["batch"]): r["images_per_s"] for r in variant_rows if r.get("variant") == "eager"}
    lines = ["| variant | input | batch | images/s | vs eager | decode ms/img | preprocess ms/img | forward ms/img | "
             "setup s |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in variant_rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | – | – | failed | – | – | – | – | {r['error'][:200]} |")
            continue
        base = eager.get((r["input"], r["batch"]))
        lines.append(f"| {r['variant']} | {r['input']} | {r['batch']} | {r['images_per_s']:.1f} | "
                     f"{_ratio(r['images_per_s'], base)} | {r['decode_ms_per_image']:.2f} | "
                     f"{r['preprocess_ms_per_image']:.2f} | {r['forward_ms_per_image']:.2f} | {r.get('setup_s', '–')} |")
    return lines


def overload_section(overload: dict | None) -> list[str]:
    if not overload:
        return ["(not run)"]
    if overload.get("error"):
        return [f"Did not complete: {overload['error']}"]
    mib = lambda kib: "–" if kib is None else f"{kib / 1024:.0f} MiB"  # noqa: E731
    lines = [
        f"Command: `{overload['command']}` (locust {overload['locust_version']}; each user sends the leaf as an "
        f"`image/jpeg` body with no wait time{', honouring Retry-After' if overload.get('honor_retry_after') else ', ignoring Retry-After (worst case)'}; "
        f"server: `flask_server.py` {overload.get('server_env') or 'defaults'}).",
        "",
        f"- Requests: {overload['total']} in {overload['seconds']} s; by status: {_errors(overload['by_status'])}.",
        f"- First 429 at {overload['first_429_users'] if overload['first_429_users'] is not None else '–'} users "
        f"({_ms(overload['first_429_s'])} s into the ramp)." if overload["first_429_users"] is not None
        else "- No 429 during the ramp.",
        f"- Latency of the successful answers: worst 1-second p99 {_ms(overload['p99_ok_ms_max'])} ms, "
        f"whole-run p50/p95/p99 {_ms(overload['p50_ms'])}/{_ms(overload['p95_ms'])}/{_ms(overload['p99_ms'])} ms "
        "(successful answers only; a 429 is answered in a few ms).",
        f"- Server RSS (VmRSS of the {overload.get('workers', 1)} gunicorn worker(s), summed): before "
        f"{mib(overload['rss_before_kib'])}, peak "
        f"{mib(overload['rss_peak_kib'])}, after {mib(overload['rss_after_kib'])}"
        + (f" (after each of {overload['rounds']} rounds: "
           f"{', '.join(mib(k) for k in overload['rss_after_round_kib'])})" if overload.get("rounds", 1) > 1 else "")
        + ".",
        "",
        "| users (up to) | seconds | answers/s | 200/s | 429/s | other errors/s | p50 ms (200s) | p99 ms (200s) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for step in overload["steps"]:
        lines.append(f"| {step['users']} | {step['seconds']} | {step['rps']:.1f} | {step['ok_rps']:.1f} | {step['r429']:.1f} | "
                     f"{step['other_err']:.1f} | {_ms(step['p50_ms'])} | {_ms(step['p99_ms'])} |")
    lines.append("")
    lines.append("(from one sample per request written by the locustfile: each 1-second window is filed under the "
                 "user count it reached; locust's own CSVs are kept in the run's work dir)")
    return lines


def write_markdown(results: dict, out: Path, chart: Path | None = None) -> str:
    m = results["machine"]
    old_notes = ""
    if out.exists():
        text = out.read_text()
        if NOTES_START in text and NOTES_END in text:
            old_notes = text.split(NOTES_START, 1)[1].split(NOTES_END, 1)[0].strip("\n")
    lines = [
        "# Benchmarks: our API vs. the alternatives",
        "",
        f"Generated by `bench/run.py` on {results['started']} ({results['elapsed_s'] / 60:.0f} min). Re-run with the "
        "command below; numbers from another machine are not comparable. Text inside the notes markers at the end "
        "survives a re-run.",
        "",
        "```",
        results["command"],
        "```",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; RAM {m['ram_gib']} GiB; {m['os']}",
        f"- Load average when the run started: {', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])} "
        "(the load generator runs on the same cores as the servers)"
        + (f"; CPU used during the run by processes this run did not start: {m['foreign_cpu_s']} s = "
           f"{m['foreign_cpu_share']:.1%} of the machine (0 % = a quiet machine)" if "foreign_cpu_s" in m else ""),
        f"- Python {m['python']}, torch {m['torch']}, torchvision {m['torchvision']}, Pillow {m['pillow']}, "
        f"Flask {m['flask']}, gunicorn {m['gunicorn']}, urllib3 {m.get('urllib3', '?')}, TorchServe {m['torchserve']} "
        f"(torch-model-archiver {m['torch-model-archiver']}, {m['java']}), ONNX Runtime {m['onnxruntime']}, "
        f"locust {m['locust']}",
        "",
        "## Setup",
        "",
        f"- Model: `{results['model']}` (sha256 {results['model_sha256']}…), the same bundle for every system.",
        *[f"- Input `{k}`: {v}" for k, v in results["inputs"].items()],
        "- Load: closed loop, N client threads with one urllib3 keep-alive connection each (a fresh multipart "
        "boundary per request, as curl and browsers send), next request as soon as the "
        f"answer arrives; {results['warmup_s']:.0f} s warm-up then {results['duration_s']:.0f} s measured per point; "
        "only answers completed inside the window count. Loopback (127.0.0.1) only.",
        *[f"- **{LABELS.get(k, k)}**: {'; '.join(v)}" for k, v in results["notes"].items()],
        *_failures(results["rows"]),
        "",
        "## At 16 clients",
        "",
        *summary_16(results),
        "",
        "### Targets",
        "",
        *targets(results),
        "",
        "### The same comparison, interleaved",
        "",
        *interleaved_section(results),
        "",
    ]
    if chart:
        rel = os.path.relpath(chart, out.resolve().parent)
        lines += [f"![throughput and p99 latency vs. concurrency]({rel})", ""]
    for name, desc in results["inputs"].items():
        rows = [r for r in results["rows"] if r["input"] == name]
        lines += [f"## Input `{name}` ({desc})", "", *results_table(rows), ""]
    lines += [
        "## In-process ceiling variants",
        "",
        "Decode + preprocess + one forward + postprocess in one process, no HTTP (`bench/ceiling_variants.py`; "
        "each variant in a fresh process, torch threads = cores unless the name says otherwise). `served` is the "
        "server's engine (the ceiling above runs it in the server's process layout instead); `vs eager` compares "
        "with eager PyTorch (the reference, and the server's forward before ONNX Runtime) at the same input and batch.",
        "",
        *variants_table(results.get("variants") or []),
        "",
        "## Overload ramp (locust)",
        "",
        *overload_section(results.get("overload")),
        "",
        "## Notes",
        "",
        NOTES_START,
        old_notes,
        NOTES_END,
        "",
    ]
    text = "\n".join(lines)
    out.write_text(text)
    return text


def plot(results: dict, chart: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    rows = [r for r in results["rows"] if r["clients"] > 0]
    inputs = list(results["inputs"])
    fig, axes = plt.subplots(len(inputs), 2, figsize=(11, 4 * len(inputs)), squeeze=False)
    colours = {"ours": "tab:green", "baseline": "tab:orange", "torchserve": "tab:blue", "ceiling": "black",
               "litserve": "tab:purple", "rayserve": "tab:cyan", "bentoml": "tab:red", "pytriton": "tab:olive"}
    for i, name in enumerate(inputs):
        tput, lat = axes[i]
        for system in ORDER:
            pts = sorted((r for r in rows if r["system"] == system and r["input"] == name), key=lambda r: r["clients"])
            if not pts:
                continue
            xs = [r["clients"] for r in pts]
            style = {"color": colours[system], "marker": "o", "linestyle": "--" if system == "ceiling" else "-"}
            tput.plot(xs, [r["throughput"] for r in pts], label=LABELS[system], **style)
            if system != "ceiling":
                lat.plot(xs, [r["p99_ms"] if r["p99_ms"] is not None else float("nan") for r in pts],
                         label=LABELS[system], **style)
        tput.set_title(f"{name}: throughput (req/s; ceiling in images/s)")
        lat.set_title(f"{name}: p99 latency (ms)")
        for ax in (tput, lat):
            ax.set_xscale("log", base=2)
            ax.set_xticks(results["clients"], [str(c) for c in results["clients"]])
            ax.set_xlabel("concurrent clients")
            ax.grid(True, alpha=0.3)
        lat.set_yscale("log")
        lat.yaxis.set_major_formatter(ticker.ScalarFormatter())
        lat.yaxis.set_minor_formatter(ticker.NullFormatter())
        tput.set_ylim(bottom=0)
        tput.legend(fontsize=8)
        lat.legend(fontsize=8)
    fig.suptitle(f"{results['machine']['cpu']}, {results['machine']['cores']} cores — {results['started']}")
    fig.tight_layout()
    chart.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(chart, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--chart", type=Path, default=Path("bench/throughput_latency.png"))
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    plot(results, args.chart)
    write_markdown(results, args.out, args.chart)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
