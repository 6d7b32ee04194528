"""Before a peer is timed: its answers on the sample photos must be ours (issue 19: a faster wrong answer is no win).

`reference_answers` runs our own prediction path (inference.load_bundle with the server's default engine, ONNX
Runtime on the CPU, and inference.predict) in a child process on every inference_image/*.jpg; `check_answers`
posts each sample to a running system and compares: the same top class, every probability within `TOLERANCE`.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import urllib3

from bench.loadgen import RequestBuilder

ROOT = Path(__file__).resolve().parent.parent.parent
SAMPLES = ROOT / "inference_image"
TOLERANCE = 1e-4  # batch size and thread count move ONNX Runtime's probabilities by ~1e-6; a different resize by >1e-3


class AnswersDiffer(RuntimeError):
    """A system's answers are not ours: its timings would compare different work."""


def sample_paths() -> list[Path]:
    return sorted(SAMPLES.glob("*.jpg"))


def reference_answers(model: Path, cache: Path | None = None) -> dict[str, dict]:
    """{sample file name: {"class_name", "probabilities"}} from our prediction path, computed once per run."""
    if cache is not None and cache.is_file():
        return json.loads(cache.read_text())
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from inference import decode_image, load_bundle, predict\n"
        "bundle = load_bundle(sys.argv[1], device='cpu')\n"
        "out = {}\n"
        "for path in sys.argv[2:]:\n"
        "    p = predict(bundle, [decode_image(Path(path).read_bytes())])[0]\n"
        "    out[Path(path).name] = {'class_name': p.class_name, 'probabilities': p.probabilities}\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(model), *map(str, sample_paths())], cwd=ROOT,
                          capture_output=True, text=True, check=True, timeout=600)
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(answers))
    return answers


def compare(name: str, got: dict, want: dict) -> str | None:
    """None when `got` is `want` (same class, probabilities within TOLERANCE), else what differs."""
    if got.get("class_name") != want["class_name"]:
        return f"{name}: class {got.get('class_name')!r}, ours {want['class_name']!r}"
    probabilities = got.get("probabilities") or {}
    if set(probabilities) != set(want["probabilities"]):
        return f"{name}: classes {sorted(probabilities)} are not ours"
    worst = max(abs(float(probabilities[k]) - v) for k, v in want["probabilities"].items())
    return None if worst <= TOLERANCE else f"{name}: a probability differs from ours by {worst:.2g}"


def check_answers(url: str, build: RequestBuilder, parse: Callable[[bytes], dict], expected: dict[str, dict]) -> int:
    """Post every sample once; raise AnswersDiffer listing what differs. Returns how many samples matched."""
    target = urllib3.util.parse_url(url)
    pool = urllib3.HTTPConnectionPool(target.host, target.port, maxsize=1, retries=False, timeout=60.0)
    problems = []
    try:
        for path in sample_paths():
            body, headers = build(path.read_bytes())
            response = pool.urlopen("POST", target.request_uri, body=body, headers=headers)
            if response.status != 200:
                problems.append(f"{path.name}: HTTP {response.status} {response.data[:200]!r}")
                continue
            problem = compare(path.name, parse(response.data), expected[path.name])
            if problem:
                problems.append(problem)
    finally:
        pool.close()
    if problems or not expected:
        raise AnswersDiffer("answers differ from ours: " + "; ".join(problems[:5]) if problems else "no samples")
    return len(expected)
