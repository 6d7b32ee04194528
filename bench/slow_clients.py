"""Slow clients (slowloris): many sockets that send a request head a few bytes at a time and never finish it.

    with SlowClients("127.0.0.1", 5000, count=1000, interval_s=1.0) as slow:
        ...  # measure a normal client meanwhile; slow.open_count() says how many are still connected

One background thread drives every socket with a selector (no thread per socket), so 1,000 of them cost the
load generator almost nothing. Each socket sends "POST /predict HTTP/1.1", then one more header line every
`interval_s` (the classic slowloris), or with `mode="body"` a complete head announcing a 1-MB body and then one
byte of it per interval (the slow-body variant). Traffic goes only to the address given; the thread stops by
itself after `max_seconds` even if `close()` is never called.
"""
from __future__ import annotations

import selectors
import socket
import threading
import time


class SlowClients:
    def __init__(self, host: str, port: int, count: int, interval_s: float = 1.0, mode: str = "head",
                 max_seconds: float = 300.0) -> None:
        if mode not in ("head", "body"):
            raise ValueError(f"mode must be 'head' or 'body', got {mode!r}")
        self.host, self.port, self.count = host, port, count
        self.interval_s, self.mode, self.max_seconds = interval_s, mode, max_seconds
        self.sockets: list[socket.socket] = []
        self.closed_by_server = 0  # sockets the server closed (timeouts, 408s) while we trickled
        self.connect_failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _opening(self) -> bytes:
        head = f"POST /predict HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if self.mode == "body":
            head += "Content-Type: image/jpeg\r\nContent-Length: 1000000\r\n\r\n"
        return head.encode()

    def open(self) -> "SlowClients":
        for _ in range(self.count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(5)
            try:
                sock.connect((self.host, self.port))
                sock.sendall(self._opening())
            except OSError:
                self.connect_failures += 1
                sock.close()
                continue
            sock.setblocking(False)
            self.sockets.append(sock)
        self._thread = threading.Thread(target=self._trickle, name="slow-clients", daemon=True)
        self._thread.start()
        return self

    def _trickle(self) -> None:
        selector = selectors.DefaultSelector()
        for sock in self.sockets:
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + self.max_seconds
        counter = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=self.interval_s):  # the server answered or closed: drop it
                self._forget(selector, key.fileobj)
            counter += 1
            chunk = b"x" if self.mode == "body" else f"X-Slow-{counter}: {counter}\r\n".encode()
            for key in list(selector.get_map().values()):
                try:
                    key.fileobj.send(chunk)
                except OSError:
                    self._forget(selector, key.fileobj)
        selector.close()

    def _forget(self, selector: selectors.BaseSelector, sock: socket.socket) -> None:
        selector.unregister(sock)
        self.closed_by_server += 1
        sock.close()

    def open_count(self) -> int:
        return sum(1 for sock in self.sockets if sock.fileno() != -1)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval_s + 5)
        for sock in self.sockets:
            sock.close()

    def __enter__(self) -> "SlowClients":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
