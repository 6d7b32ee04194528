"""Durable store for "this prediction is wrong" reports: the image file plus one SQLite row.

SQLite (WAL mode, one connection per call) keeps concurrent writers from several threads or
worker processes safe; file names are server-made UUIDs, so nothing a client sends reaches a path.
"""
from __future__ import annotations

import io
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from PIL import Image

SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    image_file TEXT NOT NULL,
    predicted TEXT,
    correct TEXT NOT NULL,
    comment TEXT,
    model_sha256 TEXT
)
"""


def image_extension(data: bytes) -> str:
    """File extension from the image's own header, never from the client's file name."""
    with Image.open(io.BytesIO(data)) as img:
        return {"JPEG": "jpg", "MPO": "jpg", "TIFF": "tif"}.get(img.format or "", (img.format or "img").lower())


class FeedbackStore:
    """Created on first use: a server that never receives feedback leaves no folder or database behind."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.images = self.folder / "images"
        self.db_path = self.folder / "feedback.sqlite3"
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        """A connection to a database that has the table: each process creates it (if missing) once, on first use."""
        if not self._schema_ready:
            with self._schema_lock:
                if not self._schema_ready:
                    self.images.mkdir(parents=True, exist_ok=True)
                    with sqlite3.connect(self.db_path, timeout=30) as db:  # IF NOT EXISTS: other processes may race
                        db.execute("PRAGMA journal_mode=WAL")
                        db.execute(SCHEMA)
                    self._schema_ready = True
        return sqlite3.connect(self.db_path, timeout=30)

    def add(self, image: bytes, predicted: str | None, correct: str, comment: str | None,
            model_sha256: str) -> str:
        """Write the image first, then the row, so a row never points at a missing file."""
        item_id = uuid.uuid4().hex
        name = f"{item_id}.{image_extension(image)}"
        self.images.mkdir(parents=True, exist_ok=True)  # first use creates the folder
        tmp = self.images / f".{name}.tmp"
        tmp.write_bytes(image)
        tmp.replace(self.images / name)
        with self._connect() as db:
            db.execute(
                "INSERT INTO feedback VALUES (?, ?, ?, ?, ?, ?, ?)",
                (item_id, time.time(), name, predicted, correct, comment, model_sha256),
            )
        return item_id

    def rows(self) -> list[dict]:
        if not self.db_path.exists():
            return []
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM feedback ORDER BY created_at")]
