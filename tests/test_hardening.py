"""Issue 15 regressions through the API: hostile images, parser limits that must say their real reason, and the
feedback store's caps. Flask's test client on the tiny model; the chunked body goes through real gunicorn."""
from __future__ import annotations

import base64
import http.client
import io
import json
import sqlite3
import zlib

import pytest
from PIL import Image
from support import encode
from test_api import assert_error, client_encoded, files
from urllib3 import encode_multipart_formdata

from bench import hostile_files as hostile
from serving.feedback import FeedbackStore, FeedbackStoreFull

HOSTILE_PREDICTS = [
    ("line-png", lambda: hostile.wide_png(30_000), 400, "bad_aspect_ratio"),
    ("tiff-tile-bomb", lambda: hostile.tiled_tiff(1, 1, 4096), 400, "corrupt_image"),
    ("tiff-rational-strip-offsets", hostile.tiff_rational_strip_offsets, 400, "corrupt_image"),
    ("header-bomb", lambda: hostile.png(40_000, 40_000, idat=zlib.compress(b"")), 413, "image_too_large"),
]


@pytest.mark.parametrize("build, status, code", [c[1:] for c in HOSTILE_PREDICTS], ids=[c[0] for c in HOSTILE_PREDICTS])
@pytest.mark.parametrize("endpoint", ["/predict", "/feedback"])
def test_hostile_images_get_a_clear_4xx_and_are_never_stored(app, client, leaf_bytes, endpoint, build, status, code):
    answer = client.post(endpoint, data={"file": (io.BytesIO(build()), "x.img"), "correct_class": "healthy"})
    assert_error(answer, status, code)
    assert "x.img" in answer.get_json()["error"]["message"]
    assert app.extensions["tomato"].feedback.rows() == []
    images = app.extensions["tomato"].feedback.images  # created on first use: it may not exist at all
    assert not images.exists() or not any(images.iterdir())
    assert client.post("/predict", data=files((leaf_bytes, "ok.jpg"))).status_code == 200


@pytest.mark.parametrize("data", [hostile.png16(700), hostile.jpeg_with_bad_exif(), hostile.webp_with_bad_exif(),
                                  hostile.tiled_tiff(300, 200, 256)], ids=["png16", "jpeg-bad-exif", "webp-bad-exif",
                                                                           "tiled-tiff"])
def test_odd_but_real_images_are_classified(client, data):
    response = client.post("/predict", data=files((data, "odd")))
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["predictions"][0]["class_name"]


def test_pixel_limit_above_pillows_default_applies_and_is_quoted(make_app):
    grey_100_mp = hostile.png(10_000, 10_000, colour_type=0, idat=zlib.compress(bytes(10_001)))
    assert make_app(MAX_IMAGE_PIXELS=120_000_000).test_client().post(
        "/predict", data=files((grey_100_mp, "big.png"))).status_code == 200
    answer = make_app().test_client().post("/predict", data=files((grey_100_mp, "big.png")))
    assert "the limit is 50,000,000" in assert_error(answer, 413, "image_too_large")["error"]["message"]


def test_deeply_nested_json_is_bad_json(client, leaf_bytes):
    body = "[" * 100_000 + "]" * 100_000
    answer = client.post("/predict", data=body, content_type="application/json")
    assert "nested too deeply" in assert_error(answer, 400, "bad_json")["error"]["message"]
    nested_object = '{"image": ' + "[" * 100_000 + "]" * 100_000 + "}"
    assert_error(client.post("/predict", data=nested_object, content_type="application/json"), 400, "bad_json")
    assert client.post("/predict", data=files((leaf_bytes, "ok.jpg"))).status_code == 200


def test_images_are_counted_before_any_is_base64_decoded(client, monkeypatch):
    decoded = []
    import serving.uploads

    real_b64 = serving.uploads._b64
    monkeypatch.setattr(serving.uploads, "_b64", lambda value, name: decoded.append(name) or real_b64(value, name))
    answer = client.post("/predict", json={"images": ["AAAA"] * 100_000})
    assert "100000 images sent" in assert_error(answer, 400, "too_many_files")["error"]["message"]
    assert decoded == []


def test_a_big_text_field_is_413_with_its_own_reason(app, client, leaf_bytes):
    form = {"file": ("a.jpg", leaf_bytes, "image/jpeg"), "correct_class": "healthy", "comment": "x" * 600_000}
    answer = client.post("/feedback", **client_encoded(form))
    message = assert_error(answer, 413, "payload_too_large")["error"]["message"]
    assert 'text field "comment"' in message and "500,000 bytes" in message and "MiB" not in message
    assert app.extensions["tomato"].feedback.rows() == []


def test_the_body_limit_still_names_the_body(make_app, leaf_bytes):
    answer = make_app(MAX_CONTENT_LENGTH=10_000).test_client().post("/predict", data=files((leaf_bytes * 3, "a.jpg")))
    assert "request body is larger than 10000 bytes" in assert_error(answer, 413, "payload_too_large")["error"]["message"]


def test_a_5000_character_filename_is_a_clear_400(client, leaf_bytes):
    answer = client.post("/predict", **client_encoded({"file": ("a" * 5000 + ".jpg", leaf_bytes, "image/jpeg")}))
    message = assert_error(answer, 400, "bad_multipart")["error"]["message"]
    assert "5,004 characters" in message and '"file"' in message


def test_a_long_but_real_filename_is_accepted(client, leaf_bytes):
    name = "Blatt-ä-" * 120 + ".jpg"  # 964 characters; percent-encoded, the header line is past python-multipart's 4 KiB
    answer = client.post("/predict", **client_encoded({"file": (name, leaf_bytes, "image/jpeg")}))
    assert answer.status_code == 200 and answer.get_json()["predictions"][0]["filename"] == name


def test_a_huge_part_header_is_a_clear_400(client, leaf_bytes):
    body = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\nX-Padding: " + b"p" * 20_000
            + b"\r\n\r\n" + leaf_bytes + b"\r\n--b--\r\n")
    answer = client.post("/predict", data=body, content_type="multipart/form-data; boundary=b")
    assert "too large" in assert_error(answer, 400, "bad_multipart")["error"]["message"]


def _chunked_post(url: str, path: str, body: bytes, content_type: str) -> tuple[int, dict]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        pieces = (body[i:i + 256 * 1024] for i in range(0, len(body), 256 * 1024))
        connection.request("POST", path, body=pieces, headers={"Content-Type": content_type}, encode_chunked=True)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_chunked_bodies_over_the_limit_are_413_on_gunicorn(start_server, tiny_bundle_path, leaf_bytes):
    server = start_server(tiny_bundle_path, {"TOMATO_MAX_CONTENT_LENGTH": "1000000", "TOMATO_TORCH_THREADS": "1"},
                          threads=8, workers=1)
    padded_jpeg = leaf_bytes + b"\0" * (1_000_000 - len(leaf_bytes))  # exactly the limit: still classified
    assert _chunked_post(server.url, "/predict", padded_jpeg, "image/jpeg")[0] == 200
    for content_type, body in [("image/jpeg", padded_jpeg + b"\0"),
                               ("application/json", json.dumps({"image": base64.b64encode(padded_jpeg).decode()}).encode())]:
        status, answer = _chunked_post(server.url, "/predict", body, content_type)
        assert (status, answer["error"]["code"]) == (413, "payload_too_large"), answer
    form, form_type = encode_multipart_formdata({"file": ("a.jpg", padded_jpeg, "image/jpeg")})
    status, answer = _chunked_post(server.url, "/predict", form, form_type)
    assert (status, answer["error"]["code"]) == (413, "payload_too_large"), answer
    assert _chunked_post(server.url, "/predict", leaf_bytes, "image/jpeg")[0] == 200


def _report(client, image: bytes):
    return client.post("/feedback", data={"file": (io.BytesIO(image), "a.jpg"), "correct_class": "healthy"})


def test_feedback_store_full_by_count_is_507(make_app, leaf_bytes):
    app = make_app(FEEDBACK_MAX_ITEMS=2)
    client = app.test_client()
    assert [_report(client, leaf_bytes).status_code, _report(client, leaf_bytes).status_code] == [201, 201]
    answer = _report(client, leaf_bytes)
    assert "the limit is 2" in assert_error(answer, 507, "feedback_store_full")["error"]["message"]
    assert len(app.extensions["tomato"].feedback.rows()) == 2
    assert len(list(app.extensions["tomato"].feedback.images.iterdir())) == 2


def test_feedback_store_full_by_bytes_is_507(make_app, leaf_bytes):
    client = make_app(FEEDBACK_MAX_BYTES=len(leaf_bytes) * 2 + 200).test_client()
    assert [_report(client, leaf_bytes).status_code, _report(client, leaf_bytes).status_code] == [201, 201]
    assert "bytes used" in assert_error(_report(client, leaf_bytes), 507, "feedback_store_full")["error"]["message"]
    assert _report(client, encode(Image.new("RGB", (4, 4)), "PNG")).status_code == 201  # what is left takes a small one


def test_a_store_from_before_the_caps_gets_its_sizes_counted(tmp_path, leaf_bytes):
    folder = tmp_path / "old"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "abc.jpg").write_bytes(leaf_bytes)
    with sqlite3.connect(folder / "feedback.sqlite3") as db:  # the schema as it was
        db.execute("CREATE TABLE feedback (id TEXT PRIMARY KEY, created_at REAL NOT NULL, image_file TEXT NOT NULL, "
                   "predicted TEXT, correct TEXT NOT NULL, comment TEXT, model_sha256 TEXT)")
        db.execute("INSERT INTO feedback VALUES ('abc', 1.0, 'abc.jpg', NULL, 'healthy', NULL, NULL)")
    store = FeedbackStore(folder, max_bytes=len(leaf_bytes) + 10)
    assert store.rows()[0]["image_bytes"] == len(leaf_bytes)
    with pytest.raises(FeedbackStoreFull):
        store.add(leaf_bytes, None, "healthy", None, "sha")
