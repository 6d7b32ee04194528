"""The deployment's front (deploy/nginx.conf) in front of the real server: slow clients and nginx's own answers.

nginx is installed by `make test` (the `proxy` target); these tests fail, not skip, when it is missing.
"""
from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from support import LiveServer, class_of, free_port, sample_files

from bench.nginx_front import NginxFront, nginx_binary
from bench.slow_clients import SlowClients

SERVER_THREADS = 16  # per worker: far fewer than the slow sockets below, so they alone could hold them all
SLOW_SOCKETS = 150  # per kind (slow head, slow body)


@pytest.fixture(scope="module")
def front(shipped_bundle_path, tmp_path_factory):
    """One real server (one worker, few threads) and nginx in front of it, shared by this module's tests."""
    assert nginx_binary(), "nginx is not installed: run `make proxy` (apt-get install nginx-light)"
    server = LiveServer(shipped_bundle_path, tmp_path_factory.mktemp("proxied"), threads=SERVER_THREADS, workers=1)
    proxy = None
    try:
        server.wait_ready()
        proxy = NginxFront(upstream_port=server.port, listen_port=free_port()).start()
        yield server, proxy
    finally:
        if proxy is not None:
            proxy.stop()
        server.stop()


def post_leaf(url: str, timeout: float) -> requests.Response:
    path = sample_files()[0]
    return requests.post(f"{url}/predict", files={"file": (path.name, path.read_bytes(), "image/jpeg")},
                         timeout=timeout)


def test_requests_pass_through_the_proxy_unchanged(front):
    server, proxy = front
    response = post_leaf(proxy.url, timeout=30)
    assert response.status_code == 200
    assert response.json()["predictions"][0]["class_name"] == class_of(sample_files()[0])
    error = requests.post(f"{proxy.url}/predict", data=b"not an image", headers={"Content-Type": "image/jpeg"},
                          timeout=30)
    assert error.status_code == 415 and error.json()["error"]["code"] == "not_an_image"  # the API's own JSON


def test_a_normal_client_is_answered_while_slow_clients_hold_connections(front):
    """Without the proxy these sockets starve the server (the first half of the test shows it); behind it, every
    normal request is answered while they stay connected."""
    server, proxy = front
    slow_head = SlowClients("127.0.0.1", server.port, SERVER_THREADS + 4, interval_s=0.5, max_seconds=60).open()
    try:
        time.sleep(1.0)  # every server thread is now reading a request head that never ends
        with pytest.raises(requests.exceptions.ReadTimeout):
            post_leaf(server.url, timeout=3)
    finally:
        slow_head.close()
    assert post_leaf(server.url, timeout=30).status_code == 200  # freed once the slow sockets went away

    with SlowClients("127.0.0.1", proxy.port, SLOW_SOCKETS, interval_s=0.5, max_seconds=90) as heads, \
            SlowClients("127.0.0.1", proxy.port, SLOW_SOCKETS, interval_s=0.5, mode="body", max_seconds=90) as bodies:
        time.sleep(1.0)
        with ThreadPoolExecutor(4) as pool:
            statuses = [r.status_code for r in pool.map(lambda _: post_leaf(proxy.url, timeout=30), range(12))]
        still_open = heads.open_count() + bodies.open_count()
    assert statuses == [200] * 12
    assert still_open > SERVER_THREADS * 4, f"only {still_open} slow sockets were still open while we measured"


@pytest.mark.parametrize("raw, status, code", [
    (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, "headers_too_large"),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 30000000\r\n\r\n", 413, "payload_too_large"),
])
def test_the_proxy_refuses_in_json(front, raw, status, code):
    _, proxy = front
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(raw)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:  # nginx resets a connection whose unread body it refused, after answering
            pass
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode(), answer
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body)["error"]["code"] == code


def test_the_proxy_answers_json_503_when_the_server_is_down():
    assert nginx_binary(), "nginx is not installed: run `make proxy` (apt-get install nginx-light)"
    with NginxFront(upstream_port=free_port(), listen_port=free_port()) as proxy:
        response = requests.get(f"{proxy.url}/readyz", timeout=10)
    assert response.status_code == 503 and response.headers["Retry-After"] == "2"
    assert response.json()["error"]["code"] == "not_ready"
