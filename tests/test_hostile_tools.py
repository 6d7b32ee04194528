"""The hostile round's tools (bench/hostile_requests.py, bench/slow_clients.py) build what they claim."""
from __future__ import annotations

import io
import socket
import time

from PIL import Image

from bench.hostile_requests import hostile_requests, png, tiff_tile_bomb
from bench.slow_clients import SlowClients


def test_the_image_payloads_are_what_they_claim():
    with Image.open(io.BytesIO(png(30_000, 1))) as wide:
        assert wide.size == (30_000, 1)
    data = png(7_000, 7_000, 16, 0)
    with Image.open(io.BytesIO(data)) as deep:
        assert deep.size == (7_000, 7_000) and deep.mode.startswith("I;16") and len(data) < 200_000
    bomb = tiff_tile_bomb(1_024)
    with Image.open(io.BytesIO(bomb)) as tiff:
        assert tiff.size == (1, 1) and (tiff.tag_v2[322], tiff.tag_v2[323]) == (1_024, 1_024)
    assert len({r.name for r in hostile_requests()}) == 10


def test_slow_clients_never_finish_a_request_head():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        with SlowClients("127.0.0.1", port, count=5, interval_s=0.2, max_seconds=10) as slow:
            accepted = [listener.accept()[0] for _ in range(5)]
            time.sleep(1.0)
            heads = [conn.recv(65536) for conn in accepted]
            assert slow.open_count() == 5
        for conn in accepted:
            conn.close()
    assert all(head.startswith(b"POST /predict HTTP/1.1\r\n") and b"X-Slow-2" in head for head in heads)
    assert not any(b"\r\n\r\n" in head for head in heads)
