"""Forward cost of two model bundles, timed in turns on the same host: `python -m bench.forward_ab A.pt B.pt`.

A shared host drifts by tens of percent between minutes, so one bundle timed now and another timed last week say
little; this times both, alternating, with the model card's own measurement (`model.evaluate.measure_speed`:
median per-image forward at batch 1 and 8, eager and as served) and prints one JSON line per round.
"""
from __future__ import annotations

import argparse
import json

from inference import load_bundle
from model.evaluate import measure_speed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", nargs=2, help="two bundle files")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=60, help="timed forwards per measurement")
    args = parser.parse_args(argv)
    for round_ in range(args.rounds):
        for path in args.bundles:
            bundle = load_bundle(path, device="cpu")
            print(json.dumps({"round": round_ + 1, "bundle": path, "version": bundle.version,
                              **measure_speed(bundle, 2, args.repeats)}), flush=True)


if __name__ == "__main__":
    main()
