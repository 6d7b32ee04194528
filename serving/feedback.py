"""Durable store for "this prediction is wrong" reports: the image file plus one SQLite row.

SQLite (WAL mode, one connection per call) keeps concurrent writers from several threads or
worker processes safe; file names are server-made UUIDs, so nothing a client sends reaches a path.
The store is capped by count and by bytes: the check and the insert share one write transaction, so
concurrent writers in several processes can never pass the caps together.
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
    model_sha256 TEXT,
    image_bytes INTEGER NOT NULL DEFAULT 0
)
"""


class FeedbackStoreFull(Exception):
    """The store holds as many reports, or as many image bytes, as it is allowed to."""


def image_extension(data: bytes) -> str:
    """File extension from the image's own header, never from the client's file name."""
    with Image.open(io.BytesIO(data)) as img:
        return {"JPEG": "jpg", "MPO": "jpg", "TIFF": "tif"}.get(img.format or "", (img.format or "img").lower())


class FeedbackStore:
    """Created on first use: a server that never receives feedback leaves no folder or database behind."""

    def __init__(self, folder: Path, max_items: int = 10_000, max_bytes: int = 1 << 30) -> None:
        self.folder = Path(folder)
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.images = self.folder / "images"
        self.db_path = self.folder / "feedback.sqlite3"
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    def _add_size_column(self, db: sqlite3.Connection) -> None:
        """Stores written before the byte cap existed get the column, filled from the files on disk."""
        columns = {row[1] for row in db.execute("PRAGMA table_info(feedback)")}
        if "image_bytes" in columns:
            return
        db.execute("ALTER TABLE feedback ADD COLUMN image_bytes INTEGER NOT NULL DEFAULT 0")
        for item_id, name in db.execute("SELECT id, image_file FROM feedback").fetchall():
            path = self.images / name
            size = path.stat().st_size if path.is_file() else 0
            db.execute("UPDATE feedback SET image_bytes = ? WHERE id = ?", (size, item_id))

    def _connect(self) -> sqlite3.Connection:
        """A connection to a database that has the table: each process creates it (if missing) once, on first use."""
        if not self._schema_ready:
            with self._schema_lock:
                if not self._schema_ready:
                    self.images.mkdir(parents=True, exist_ok=True)
                    with sqlite3.connect(self.db_path, timeout=30) as db:  # IF NOT EXISTS: other processes may race
                        db.execute("PRAGMA journal_mode=WAL")
                        db.execute(SCHEMA)
                        self._add_size_column(db)
                    self._schema_ready = True
        return sqlite3.connect(self.db_path, timeout=30)

    def add(self, image: bytes, predicted: str | None, correct: str, comment: str | None,
            model_sha256: str) -> str:
        """Check the caps and insert in one write transaction; the image file is written before its row, so a row
        never points at a missing file. Raises `FeedbackStoreFull` when this report would pass a cap."""
        item_id = uuid.uuid4().hex
        name = f"{item_id}.{image_extension(image)}"
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")  # the write lock: no other writer between the count and the insert
            count, used = db.execute("SELECT COUNT(*), COALESCE(SUM(image_bytes), 0) FROM feedback").fetchone()
            if count >= self.max_items:
                raise FeedbackStoreFull(f"the feedback store is full ({count:,} reports, the limit is "
                                        f"{self.max_items:,})")
            if used + len(image) > self.max_bytes:
                raise FeedbackStoreFull(f"the feedback store is full ({used:,} of {self.max_bytes:,} bytes used; "
                                        f"this image needs {len(image):,})")
            tmp = self.images / f".{name}.tmp"
            tmp.write_bytes(image)
            tmp.replace(self.images / name)
            db.execute(
                "INSERT INTO feedback (id, created_at, image_file, predicted, correct, comment, model_sha256, "
                "image_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (item_id, time.time(), name, predicted, correct, comment, model_sha256, len(image)),
            )
        return item_id

    def rows(self) -> list[dict]:
        if not self.db_path.exists():
            return []
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM feedback ORDER BY created_at")]
