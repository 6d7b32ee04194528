"""The demo page (streamlit.py) driven by Streamlit's AppTest against REAL API processes over real HTTP.

The tiny random-weight model (fast, ~0.1 probabilities) covers the page's mechanics and the low-confidence
warning; the shipped model covers "the page names the right condition". Failure states come from real
servers configured to fail (tight limits, a model that cannot load, a socket that never answers, a closed port).
"""
from __future__ import annotations

import ast
import json
import re
import socket
import sqlite3
import time
from pathlib import Path

import pytest
import requests
from PIL import Image
from streamlit.testing.v1 import AppTest
from support import CLASS_NAMES, LiveServer, class_of, encode, free_port, sample_files

import streamlit
from model.data import DISPLAY_NAMES

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "streamlit.py")
RUN_TIMEOUT = 120  # seconds per script run: generous, the CI machine has 2 cores and may be busy
LOW_CONFIDENCE_WARNING = "Low confidence — this may not be a tomato leaf or the photo is unclear"
PAGE_ENV = ("TOMATO_API_URL", "TOMATO_LOW_CONFIDENCE", "TOMATO_API_TIMEOUT", "TOMATO_API_TOKEN")


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(autouse=True)
def clean_page_state(monkeypatch):
    """Each test starts with empty Streamlit caches and none of the page's env vars from the outer shell."""
    streamlit.cache_data.clear()
    streamlit.cache_resource.clear()
    for name in PAGE_ENV:
        monkeypatch.delenv(name, raising=False)
    yield
    streamlit.cache_data.clear()
    streamlit.cache_resource.clear()


@pytest.fixture(scope="module")
def tiny_server(tiny_bundle_path, tmp_path_factory):
    """One real gunicorn API on the tiny model shared by this module's read-mostly tests (start-up costs seconds)."""
    server = LiveServer(tiny_bundle_path, tmp_path_factory.mktemp("page-tiny-server"))
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def strict_server(tiny_bundle_path, tmp_path_factory):
    """A real API with tight limits, so each documented error status can be provoked with an ordinary upload."""
    env = {"TOMATO_MAX_IMAGE_PIXELS": "100000",  # 256x256 samples pass, a 500x500 photo gets 413
           "TOMATO_MAX_QUEUE": "1", "TOMATO_MAX_BATCH_SIZE": "1"}  # 16 images at once overflow the queue: 429
    server = LiveServer(tiny_bundle_path, tmp_path_factory.mktemp("page-strict-server"), extra_env=env)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def open_page(monkeypatch, api_url: str, **env: str) -> AppTest:
    """The page as a browser session would first see it, with the API URL (and other settings) from the env."""
    monkeypatch.setenv("TOMATO_API_URL", api_url)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    at = AppTest.from_file(PAGE, default_timeout=RUN_TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def upload(at: AppTest, files: list[tuple[str, bytes, str]]) -> AppTest:
    """Choose files in the upload form and press its submit button: one script run, as in a browser."""
    at.file_uploader(key="uploads").set_value(files)
    at.button(key="check").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def sample(name: str) -> Path:
    return ROOT / "inference_image" / f"{name}.jpg"


def as_upload(path: Path) -> tuple[str, bytes, str]:
    return path.name, path.read_bytes(), "image/jpeg"


def values(elements) -> list[str]:
    return [e.value for e in elements]


def error_text(at: AppTest) -> str:
    return " | ".join(values(at.error))


def results(at: AppTest) -> list[str]:
    """The predicted condition of each result block, in page order (the first subheader is the 'Results' title)."""
    heads = values(at.main.subheader)
    assert heads and heads[0].startswith("Results for"), heads
    return heads[1:]


def image_captions(at: AppTest) -> list[str]:
    """Captions of the result photos (the sample gallery's thumbnails, inside the tabs, come first)."""
    in_tabs = sum(len(tab.image) for tab in at.tabs)
    return [caption for image in list(at.main.image)[in_tabs:] for caption in image.captions]


def server_metric(server: LiveServer, name: str, **labels: str) -> float:
    """Read one Prometheus sample from the API's /metrics: proof of what really reached the server."""
    text = requests.get(server.url + "/metrics", timeout=5).text
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" ([0-9.e+]+)"
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


# ---------------------------------------------------------------- static checks (no server)


def test_page_imports_no_torch_or_model_code():
    """The page is an HTTP client: importing torch or project modules would tie it to the model's machine."""
    tree = ast.parse(Path(PAGE).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    forbidden = {"torch", "torchvision", "model", "inference", "serving", "flask_server", "flask"}
    assert not imported & forbidden, imported & forbidden
    assert {"requests", "streamlit"} <= imported


def test_disease_table_covers_every_class_with_advice():
    info = json.loads((ROOT / "assets" / "disease_info.json").read_text(encoding="utf-8"))
    assert set(info["diseases"]) == set(CLASS_NAMES)
    for name, entry in info["diseases"].items():
        assert entry["cause"].strip() and entry["about"].strip(), name
        assert entry["what_to_do"] and all(step.strip() for step in entry["what_to_do"]), name
    assert "extension service" in info["note"]


# ---------------------------------------------------------------- happy paths on the tiny model


def test_sidebar_shows_status_and_model_then_follows_the_url_override(monkeypatch, tiny_server):
    at = open_page(monkeypatch, tiny_server.url)
    sidebar = " ".join(values(at.sidebar.markdown))
    assert "API ready" in sidebar
    assert "tiny-test-model" in sidebar
    assert any("Test accuracy: not recorded" in c for c in values(at.sidebar.caption))  # tiny bundle has no metrics
    assert at.sidebar.text_input(key="api_url").value == tiny_server.url

    closed = f"http://127.0.0.1:{free_port()}"
    at.sidebar.text_input(key="api_url").set_value(closed).run()
    sidebar = " ".join(values(at.sidebar.markdown))
    assert "API unreachable" in sidebar and "API ready" not in sidebar
    assert any(f"Cannot reach the API at {closed}" in c for c in values(at.sidebar.caption))


def test_upload_several_photos_in_one_request_shows_a_result_each(monkeypatch, tiny_server):
    at = open_page(monkeypatch, tiny_server.url)
    tiff = encode(Image.open(sample("healthy_2")), "TIFF")  # browsers can't show TIFF: the page re-encodes a preview
    files = [as_upload(sample("Early_blight_1")), ("healthy_2.tif", tiff, "image/tiff")]
    requests_before = server_metric(tiny_server, "tomato_http_requests_total",
                                    endpoint="/predict", method="POST", status="200")
    images_before = server_metric(tiny_server, "tomato_images_classified_total")

    upload(at, files)

    names = results(at)
    assert len(names) == 2 and set(names) <= set(DISPLAY_NAMES.values())
    assert image_captions(at) == ["Early_blight_1.jpg", "healthy_2.tif"]
    assert len(at.main.progress) == 2
    assert all(re.search(r"Confidence \d+\.\d%", p.proto.text) for p in at.main.progress)
    assert len(at.main.get("vega_lite_chart")) == 2  # the top-k bar charts
    timings = [c for c in values(at.main.caption) if c.startswith("Timing:")]
    assert len(timings) == 2 and all("inference" in t and "whole request" in t for t in timings)
    markdown = " ".join(values(at.main.markdown))
    assert "What growers usually do" in markdown
    assert any("extension service" in c for c in values(at.main.caption))
    # both photos travelled in ONE request: one more /predict on the server, two more images
    assert server_metric(tiny_server, "tomato_http_requests_total",
                         endpoint="/predict", method="POST", status="200") == requests_before + 1
    assert server_metric(tiny_server, "tomato_images_classified_total") == images_before + 2


def test_sample_picker_checks_a_leaf_with_one_click(monkeypatch, tiny_server):
    at = open_page(monkeypatch, tiny_server.url)
    assert len(at.button) >= len(sample_files())  # one button per bundled leaf
    at.button(key="sample-Septoria_leaf_spot_2").click().run()
    assert not at.exception
    names = results(at)
    assert len(names) == 1 and names[0] in DISPLAY_NAMES.values()
    assert image_captions(at) == ["Septoria_leaf_spot_2.jpg"]
    assert not at.error


def test_low_confidence_warning_follows_the_threshold(monkeypatch, tiny_server):
    """A random 10-class model is never sure (about 0.1): the default 0.6 threshold must warn, 0 must not."""
    at = open_page(monkeypatch, tiny_server.url)
    upload(at, [as_upload(sample("Leaf_Mold_1"))])
    assert LOW_CONFIDENCE_WARNING in values(at.main.warning)
    probability = float(re.search(r"Confidence ([\d.]+)%", at.main.progress[0].proto.text).group(1))
    assert probability < 60

    at = open_page(monkeypatch, tiny_server.url, TOMATO_LOW_CONFIDENCE="0")
    upload(at, [as_upload(sample("Leaf_Mold_1"))])
    assert len(results(at)) == 1
    assert LOW_CONFIDENCE_WARNING not in values(at.main.warning)


def test_feedback_is_stored_by_the_api(monkeypatch, tiny_bundle_path, start_server, tmp_path):
    server = start_server(tiny_bundle_path)  # its own feedback folder: tmp_path / "feedback"
    at = open_page(monkeypatch, server.url)
    leaf = sample("Target_Spot_1")
    at.button(key="sample-Target_Spot_1").click().run()
    predicted = next(c for c, d in DISPLAY_NAMES.items() if d == results(at)[0])

    at.selectbox(key="correct-r1-0").set_value("Target_Spot")
    at.text_input(key="comment-r1-0").set_value("rings on the lower leaves")
    at.button(key="send-r1-0").click().run()

    assert not at.exception
    assert any("correction stored" in s for s in values(at.main.success)), values(at.main.error)
    with sqlite3.connect(tmp_path / "feedback" / "feedback.sqlite3") as db:
        rows = db.execute("SELECT image_file, predicted, correct, comment FROM feedback").fetchall()
    assert len(rows) == 1
    image_file, stored_predicted, correct, comment = rows[0]
    assert (correct, stored_predicted, comment) == ("Target_Spot", predicted, "rings on the lower leaves")
    assert (tmp_path / "feedback" / "images" / image_file).read_bytes() == leaf.read_bytes()
    # the result is still on the page after the feedback rerun
    assert image_captions(at) == ["Target_Spot_1.jpg"]


def test_feedback_failure_is_reported(monkeypatch, tiny_bundle_path, start_server):
    """The API going away between the answer and the correction: a message, not a traceback."""
    server = start_server(tiny_bundle_path)
    at = open_page(monkeypatch, server.url)
    at.button(key="sample-healthy_1").click().run()
    assert len(results(at)) == 1
    server.stop()
    at.button(key="send-r1-0").click().run()
    assert not at.exception
    assert any("Correction not sent" in e and "Cannot reach the API" in e for e in values(at.main.error))


# ---------------------------------------------------------------- correctness on the shipped model


def test_page_names_the_right_condition_with_the_shipped_model(monkeypatch, shipped_server):
    at = open_page(monkeypatch, shipped_server.url)
    leaves = [sample("Early_blight_1"), sample("Yellow_Leaf_Curl_Virus_2"), sample("healthy_1")]
    upload(at, [as_upload(p) for p in leaves])
    assert results(at) == [DISPLAY_NAMES[class_of(p)] for p in leaves]
    card = requests.get(shipped_server.url + "/v1/model", timeout=10).json()
    sidebar = " ".join(values(at.sidebar.markdown))
    assert card["name"] in sidebar
    accuracy = card.get("metrics", {}).get("accuracy")
    if accuracy is not None:  # written into the bundle by `model.evaluate --store`
        assert f"Test accuracy:** {accuracy:.1%}" in sidebar
    else:
        assert any("Test accuracy: not recorded" in c for c in values(at.sidebar.caption))


# ---------------------------------------------------------------- failure states


def test_api_down_gives_a_friendly_message(monkeypatch):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    at = open_page(monkeypatch, closed)
    assert "API unreachable" in " ".join(values(at.sidebar.markdown))
    at.button(key="sample-Late_blight_1").click().run()
    assert not at.exception
    message = error_text(at)
    assert f"Cannot reach the API at {closed}" in message and "flask_server.py" in message
    assert not at.main.subheader  # no result block
    # a submit with nothing chosen explains itself instead of calling the API
    at.button(key="check").click().run()
    assert any("Choose one or more photos" in i for i in values(at.main.info))


def _png(size: int) -> bytes:
    return encode(Image.new("RGB", (size, size), (40, 120, 40)), "PNG")


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param([("notes.png", b"this is a text file, not a photo", "image/png")],
                     "does not accept this file type", id="415-not-an-image"),
        pytest.param([("cut.jpg", sample("Early_blight_1").read_bytes()[:3000], "image/jpeg")],
                     "could not use the image", id="400-truncated-jpeg"),
        pytest.param([("huge.png", _png(500), "image/png")], "Too large for the API", id="413-too-many-pixels"),
        pytest.param([as_upload(sample("Leaf_Mold_2"))] * 16, "Wait 1 second and submit again",
                     id="429-queue-full"),
    ],
)
def test_api_errors_become_friendly_messages(monkeypatch, strict_server, files, expected):
    at = open_page(monkeypatch, strict_server.url)
    upload(at, files)
    assert expected in error_text(at), error_text(at)
    assert not at.main.subheader


def test_model_that_failed_to_load_gives_503_message(monkeypatch, tmp_path):
    """A real API whose model file is missing keeps answering 503 on /readyz and /predict."""
    server = LiveServer(tmp_path / "missing.pt", tmp_path)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if requests.get(server.url + "/readyz", timeout=2).status_code == 503:
                    break
            except requests.RequestException:  # not listening yet, or slow to answer on a loaded machine
                time.sleep(0.2)
        at = open_page(monkeypatch, server.url)
        assert "Model failed to load" in " ".join(values(at.sidebar.markdown))
        at.button(key="sample-Bacterial_spot_1").click().run()
        assert not at.exception
        message = error_text(at)
        assert "The model is not ready" in message and "check the API's log" in message
    finally:
        server.stop()


def test_api_that_never_answers_times_out_with_a_message(monkeypatch):
    """A socket that accepts connections (kernel backlog) but never replies: the page's timeout must fire."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        at = open_page(monkeypatch, url, TOMATO_API_TIMEOUT="1")
        assert "API unreachable" in " ".join(values(at.sidebar.markdown))
        at.button(key="sample-Spider_mites_1").click().run()
        assert not at.exception
        assert f"The API at {url} did not answer within 1 s" in error_text(at)
