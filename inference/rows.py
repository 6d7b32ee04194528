"""One CSV layout for bulk results, written by the local batch scorer and by the job API's `?format=csv`."""
from __future__ import annotations

import csv
from typing import IO, Any, Iterable

FIELDS = ["file", "status", "verdict", "leaf_score", "verdict_reason", "class_name", "display_name", "probability",
          "top_k", "error"]


def prediction_row(file: str, prediction: dict[str, Any]) -> dict[str, str]:
    """A scored image's row from `Prediction.to_dict()` (plain JSON, as a job stores it)."""
    top = ";".join(f"{s['class_name']}:{s['probability']:.4f}" for s in prediction["top_k"])
    return {"file": file, "status": "ok", "verdict": prediction["verdict"],
            "leaf_score": f"{prediction['leaf_score']:.4f}", "verdict_reason": prediction["verdict_reason"] or "",
            "class_name": prediction["class_name"], "display_name": prediction["display_name"],
            "probability": f"{prediction['probability']:.6f}", "top_k": top, "error": ""}


def error_row(file: str, message: str) -> dict[str, str]:
    """A file that could not be scored: the reason instead of a class."""
    return {**dict.fromkeys(FIELDS, ""), "file": file, "status": "error", "error": message}


def write_rows(fh: IO[str], rows: Iterable[dict[str, str]]) -> None:
    """Header plus rows, in FIELDS order."""
    writer = csv.DictWriter(fh, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
