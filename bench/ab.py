"""Our server against itself: two (or more) checkouts or settings up at once, measured in turns.

    git worktree add /tmp/before HEAD~1
    .venv/bin/python -m bench.ab --input phone --clients 16 --rounds 3 --seconds 10 \
        "DIR=/tmp/before" "DIR=."  ["TOMATO_MEMORY_GUARD=off" ...]

Each config is `NAME=VALUE` words: `DIR=` is the checkout whose `flask_server.py` runs (default: this one, with
this repository's .venv), every other word goes into the server's environment. The rounds are bench.run's
interleaved rounds (`interleaved_rounds`): all servers up at once (default settings, each checkout's shipped model
or `--model`), each loaded in turn for `--seconds` at `--clients` closed-loop clients, so a host that drifts (this
2-vCPU VM does, by 1.5x within minutes) drifts for all of them alike. Per config and round: answers per second,
server CPU ms per answer and minor page faults per answer (bench/cpu.py); at the end, the medians and each
server's PSS after its last turn.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench import systems
from bench.inputs import prepare_inputs
from bench.run import interleaved_rounds

SHIPPED_MODEL = Path("trained_model") / "tomato_leaf_lite0.pt"  # inside each checkout


@dataclass
class Summary:
    config: str
    rounds: list[tuple[float, float, float]]  # (req/s, server CPU ms per answer, page faults per answer)
    pss_mib: int  # after its last turn


def server_for(config: str, index: int, work: Path, model: Path | None) -> systems.ServerProcess:
    """Our server as `config` says (`DIR=` checkout, the rest its environment), named by the config; without
    `model`, the checkout's own shipped bundle."""
    settings = dict(word.split("=", 1) for word in config.split())
    checkout = Path(settings.pop("DIR", systems.ROOT)).resolve()
    tmp = work / f"config-{index}"
    tmp.mkdir(parents=True, exist_ok=True)
    server = systems.ours(model or checkout / SHIPPED_MODEL, tmp, settings, checkout=checkout)
    server.name = config  # the rows of interleaved_rounds are keyed by it
    return server


def compare(configs: list[str], input_name: str = "phone", clients: int = 16, rounds: int = 3,
            seconds: float = 10.0, model: Path | None = None) -> list[Summary]:
    """Start every config at once, measure them in turns, stop them; one summary per config."""
    work = Path(tempfile.mkdtemp(prefix="tomato-ab-"))
    item = prepare_inputs(work / "inputs", (input_name,))[input_name]
    servers = [server_for(config, index, work, model) for index, config in enumerate(configs)]
    rows = interleaved_rounds(servers, model or SHIPPED_MODEL, item, clients, ceiling_batch=0, rounds=rounds,
                              duration_s=seconds, warmup_s=0.5, work=work)  # the model is the ceiling's: none here
    if len(rows) != rounds * len(configs):
        raise SystemExit(f"the rounds stopped early ({len(rows)} of {rounds * len(configs)} turns measured); "
                         f"server logs in {work}")
    summaries = []
    for config in configs:
        mine = [row for row in rows if row["system"] == config]
        summaries.append(Summary(config, [(r["throughput"], r["server_cpu_ms"], r["minor_faults"]) for r in mine],
                                 mine[-1]["pss_mib"]))
    return summaries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", help='e.g. "DIR=/tmp/before" "DIR=. TOMATO_MEMORY_GUARD=off"')
    parser.add_argument("--input", default="phone", choices=("leaf", "phone"))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--model", type=Path, default=None,
                        help="model bundle .pt for every config (default: each checkout's shipped one)")
    args = parser.parse_args(argv)
    for summary in compare(args.configs, args.input, args.clients, args.rounds, args.seconds, args.model):
        rows = summary.rounds
        print(f"[{summary.config}]: median {statistics.median(r[0] for r in rows):.1f} req/s, "
              f"{statistics.median(r[1] for r in rows):.2f} ms CPU/answer, "
              f"{statistics.median(r[2] for r in rows):.0f} page faults/answer; "
              f"PSS after the load {summary.pss_mib} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
