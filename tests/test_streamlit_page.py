"""The demo page (streamlit.py) driven by Streamlit's AppTest against REAL API processes over real HTTP.

The tiny random-weight model (fast, ~0.1 probabilities) covers the page's mechanics and "Not sure"; the shipped model
covers "the page names the right condition". Failure states come from real servers configured to fail (tight
limits, a model that cannot load, a socket that never answers, a closed port). The three verdicts come from the
shipped model itself (a sample leaf, the same leaf in grey, an everyday photo).
"""
from __future__ import annotations

import ast
import io
import json
import re
import socket
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from streamlit.testing.v1 import AppTest
from support import CLASS_NAMES, NOT_LEAF_SAMPLES, LiveServer, class_of, encode, free_port, sample_files

import streamlit
from model.data import DISPLAY_NAMES

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "streamlit.py")
RUN_TIMEOUT = 120  # seconds per script run: generous, the CI machine has 2 cores and may be busy
NOT_SURE = "Not sure"
NOT_A_LEAF = "This doesn't look like a tomato leaf"
ADVICE = "What growers usually do"
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
    assert_no_page_failure(at)
    return at


def assert_no_page_failure(at: AppTest) -> None:
    """Neither an exception nor the page's own safety net (run_page), which turns one into a polite message."""
    assert not at.exception, [e.value for e in at.exception]
    assert not [e for e in values(at.error) if "Something went wrong on this page" in e]


def upload(at: AppTest, files: list[tuple[str, bytes, str]]) -> AppTest:
    """Choose files in the upload form and press its submit button: one script run, as in a browser."""
    at.file_uploader(key="uploads").set_value(files)
    at.button(key="check").click()
    at.run()
    assert_no_page_failure(at)
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
    """Captions of the result photos (first on the page; the sample gallery's thumbnails, inside the tabs, follow)."""
    in_tabs = sum(len(tab.image) for tab in at.tabs)
    shown = list(at.main.image)
    return [caption for image in shown[:len(shown) - in_tabs] for caption in image.captions]


def details(at: AppTest):
    """The one "Details" expander that holds everything meant for developers."""
    (expander,) = [e for e in at.expander if e.label == "Details"]
    return expander


def details_text(at: AppTest) -> str:
    d = details(at)
    return " ".join(values(d.markdown) + values(d.caption))


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
        assert entry["name"] == DISPLAY_NAMES[name]  # the page's names when the API is down
        assert entry["cause"].strip() and entry["about"].strip(), name
        assert entry["what_to_do"] and all(step.strip() for step in entry["what_to_do"]), name
    assert "extension service" in info["note"]


def test_page_settings_use_streamlit_option_names():
    """.streamlit/config.toml: every key is a real Streamlit option (a typo is silently ignored), set as intended."""
    import tomllib

    from streamlit import config

    settings = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    options = config.get_config_options()
    flat = {f"{section}.{key}": value for section, keys in settings.items() for key, value in keys.items()}
    assert set(flat) <= set(options), set(flat) - set(options)
    assert flat["server.fileWatcherType"] == "none" and flat["server.address"] == "127.0.0.1"
    assert flat["browser.gatherUsageStats"] is False and flat["server.maxUploadSize"] == 20


# ---------------------------------------------------------------- happy paths on the tiny model


def test_details_show_status_and_model_then_follow_the_url_override(monkeypatch, tiny_server):
    at = open_page(monkeypatch, tiny_server.url)
    assert not at.sidebar.children  # nothing for developers outside the one expander
    text = details_text(at)
    assert "API ready" in text and "tiny-test-model" in text
    assert "Test accuracy: not recorded" in text  # tiny bundle has no metrics
    assert "TOMATO_LOW_CONFIDENCE" in text
    assert at.text_input(key="api_url").value == tiny_server.url
    assert not at.main.warning and not at.main.info  # no service notice while the API is ready

    closed = f"http://127.0.0.1:{free_port()}"
    at.text_input(key="api_url").set_value(closed).run()
    text = details_text(at)
    assert "API unreachable" in text and "API ready" not in text
    assert f"Cannot reach the API at {closed}" in text
    assert any("The leaf checker is not available right now" in w for w in values(at.main.warning))


def test_upload_several_photos_in_one_request_shows_a_result_each(monkeypatch, tiny_server):
    # threshold 0: the tiny model's guesses count as confident, so each block is a full diagnosis
    at = open_page(monkeypatch, tiny_server.url, TOMATO_LOW_CONFIDENCE="0")
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
    assert all(re.fullmatch(r"Confidence (\d+%|over 99%|under 1%)", p.proto.text) for p in at.main.progress)
    assert len(at.main.get("vega_lite_chart")) == 2  # the top-k bar charts
    assert ADVICE in " ".join(values(at.main.markdown))
    assert any("extension service" in c for c in values(at.main.caption))
    timing = details_text(at)  # timings live under Details only
    assert "Timing of the last check" in timing and "Early_blight_1.jpg: decode" in timing and "whole request" in timing
    assert not [c for c in values(at.main.caption) if "ms" in c and "Timing" in c]
    # both photos travelled in ONE request: one more /predict on the server, two more images
    assert server_metric(tiny_server, "tomato_http_requests_total",
                         endpoint="/predict", method="POST", status="200") == requests_before + 1
    assert server_metric(tiny_server, "tomato_images_classified_total") == images_before + 2


def test_sample_picker_checks_a_leaf_with_one_click(monkeypatch, tiny_server):
    at = open_page(monkeypatch, tiny_server.url)
    assert len(at.button) >= len(sample_files())  # one button per bundled leaf
    at.button(key="sample-Septoria_leaf_spot_2").click().run()
    assert_no_page_failure(at)
    assert len(results(at)) == 1
    assert image_captions(at) == ["Septoria_leaf_spot_2.jpg"]
    assert not at.error
    # results come first on the page: the "Results for" heading is the first subheader, above the sample gallery
    assert values(at.main.subheader)[0] == "Results for 1 photo"


def test_show_where_the_model_looked_toggles_the_overlay(monkeypatch, tiny_server):
    at = open_page(monkeypatch, tiny_server.url)
    at.button(key="sample-Septoria_leaf_spot_2").click().run()
    assert_no_page_failure(at)
    toggles = [t for t in at.toggle if t.label == "Show where the model looked"]
    assert len(toggles) == 1 and toggles[0].value is False
    assert image_captions(at) == ["Septoria_leaf_spot_2.jpg"]
    outcome = at.session_state["outcome"]
    assert "explanation" not in outcome.results[0].prediction  # the answer was not explained: no overlay to pay for
    toggles[0].set_value(True).run()
    assert_no_page_failure(at)
    captions = image_captions(at)
    assert len(captions) == 2 and captions[1].startswith("Red: what spoke most for")
    fetched = at.session_state[f"r{outcome.number}-0-explanation"]  # asked for when the toggle went on, then kept
    assert fetched["shape"] and fetched["overlay_png"]
    at.run()
    assert image_captions(at) == captions


def test_a_low_confidence_guess_is_not_sure_without_treatment_advice(monkeypatch, legacy_tiny_bundle_path,
                                                                    start_server):
    """A random 10-class model saved as a 1.x bundle is never sure (about 0.1): the API's default rule answers
    "uncertain" (classes_close), and the page shows the two closest conditions and no treatment advice."""
    server = start_server(legacy_tiny_bundle_path)
    at = open_page(monkeypatch, server.url)
    upload(at, [as_upload(sample("Leaf_Mold_1"))])
    assert results(at) == [NOT_SURE]
    markdown = " ".join(values(at.main.markdown))
    closest = re.search(r"It looks most like \*\*(.+?)\*\* or \*\*(.+?)\*\*", markdown)
    assert closest and {closest.group(1), closest.group(2)} <= set(DISPLAY_NAMES.values())
    assert ADVICE not in markdown and "One leaf per photo" in markdown
    assert "Two conditions look alike in this photo." in values(at.main.caption)
    assert not at.main.progress


def test_a_bad_file_among_leaves_gets_its_own_message_and_the_leaves_are_answered(monkeypatch, tiny_server):
    at = open_page(monkeypatch, tiny_server.url)
    upload(at, [as_upload(sample("Early_blight_1")), ("notes.jpg", b"just a text file", "image/jpeg"),
                as_upload(sample("healthy_1"))])
    assert values(at.main.subheader)[0] == "Results for 3 photos"
    assert len(results(at)) == 2  # the two leaves; the text file's block carries an error instead of a heading
    message = error_text(at)
    assert "notes.jpg is not a photo the checker can read." in message and "Use a JPEG" in message
    assert "does not accept this file type" not in message and "))" not in message
    assert message.count("JPEG, PNG") == 1  # the format list once, not twice


def _phone_photo(path: Path) -> bytes:
    """A 12-MP JPEG of about 3 MB, like a phone's: a sample leaf upscaled, with sensor-like noise."""
    big = np.asarray(Image.open(path).resize((4000, 3000)), dtype=np.int16)
    noisy = np.clip(big + np.random.default_rng(0).normal(0, 8, big.shape).astype(np.int16), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(noisy.astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_seven_phone_photos_are_shrunk_and_checked_in_one_request(monkeypatch, tiny_server):
    photo = _phone_photo(sample("Leaf_Mold_1"))
    assert len(photo) > 2_500_000 and 7 * len(photo) > 20 * 1024 * 1024  # as sent, they would be refused (413)
    at = open_page(monkeypatch, tiny_server.url)
    requests_before = server_metric(tiny_server, "tomato_http_requests_total",
                                    endpoint="/predict", method="POST", status="200")
    upload(at, [(f"IMG_{i}.jpg", photo, "image/jpeg") for i in range(7)])
    assert values(at.main.subheader)[0] == "Results for 7 photos"
    assert len(results(at)) == 7 and not at.main.error
    assert server_metric(tiny_server, "tomato_http_requests_total",
                         endpoint="/predict", method="POST", status="200") == requests_before + 1


# ---------------------------------------------------------------- verdicts (issue 14)


def _greyscale(path: Path) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).convert("L").convert("RGB").save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def test_the_three_verdicts_each_get_their_own_display(monkeypatch, shipped_server):
    """The shipped model's own verdicts: a sample leaf is diagnosed, the same leaf in grey is not sure, an everyday
    photo is not a tomato leaf; each gets its own display."""
    leaf = sample("Late_blight_1")
    at = open_page(monkeypatch, shipped_server.url)
    upload(at, [as_upload(leaf), ("grey.jpg", _greyscale(leaf), "image/jpeg"), as_upload(NOT_LEAF_SAMPLES[0])])
    diagnosed, uncertain, not_a_leaf = results(at)
    assert diagnosed == DISPLAY_NAMES["Late_blight"]
    assert (uncertain, not_a_leaf) == (NOT_SURE, NOT_A_LEAF)
    markdown = values(at.main.markdown)
    assert sum(ADVICE in m for m in markdown) == 1  # treatment advice for the diagnosis only
    assert any("It looks most like" in m for m in markdown)
    tips = [m for m in markdown if "The checker only knows tomato leaves" in m]
    assert len(tips) == 1 and all(t in tips[0] for t in ("One leaf per photo", "fill most of the frame", "daylight"))
    captions = values(at.main.caption)
    assert "The photo has no colour; the model needs a colour photo." in captions
    assert len(at.main.progress) == 1  # a confidence bar only where there is a diagnosis


def test_feedback_is_stored_by_the_api(monkeypatch, tiny_bundle_path, start_server, tmp_path):
    server = start_server(tiny_bundle_path)  # its own feedback folder: tmp_path / "feedback"
    at = open_page(monkeypatch, server.url, TOMATO_LOW_CONFIDENCE="0")
    leaf = sample("Target_Spot_1")
    at.button(key="sample-Target_Spot_1").click().run()
    predicted = next(c for c, d in DISPLAY_NAMES.items() if d == results(at)[0])

    at.selectbox(key="correct-r1-0").set_value("Target_Spot")
    at.text_input(key="comment-r1-0").set_value("rings on the lower leaves")
    at.button(key="send-r1-0").click().run()

    assert_no_page_failure(at)
    assert any("correction stored" in s for s in values(at.main.success)), values(at.main.error)
    with sqlite3.connect(tmp_path / "feedback" / "feedback.sqlite3") as db:
        rows = db.execute("SELECT image_file, predicted, correct, comment FROM feedback").fetchall()
    assert len(rows) == 1
    image_file, stored_predicted, correct, comment = rows[0]
    assert (correct, stored_predicted, comment) == ("Target_Spot", predicted, "rings on the lower leaves")
    assert (tmp_path / "feedback" / "images" / image_file).read_bytes() == leaf.read_bytes()
    # the result is still on the page after the feedback rerun
    assert image_captions(at) == ["Target_Spot_1.jpg"]


def test_feedback_offers_not_a_tomato_leaf(monkeypatch, tiny_bundle_path, start_server, tmp_path):
    """The choice sends correct_class=not_tomato_leaf, and the API stores it."""
    server = start_server(tiny_bundle_path)
    at = open_page(monkeypatch, server.url)
    at.button(key="sample-healthy_1").click().run()
    select = at.selectbox(key="correct-r1-0")
    assert "not_tomato_leaf" in select.options or "This is not a tomato leaf" in select.options
    select.set_value("not_tomato_leaf")
    at.button(key="send-r1-0").click().run()
    assert_no_page_failure(at)
    assert any("correction stored" in s for s in values(at.main.success)), error_text(at)
    with sqlite3.connect(tmp_path / "feedback" / "feedback.sqlite3") as db:
        assert db.execute("SELECT correct FROM feedback").fetchall() == [("not_tomato_leaf",)]


def test_feedback_failure_is_reported(monkeypatch, tiny_bundle_path, start_server):
    """The API going away between the answer and the correction: a message, not a traceback."""
    server = start_server(tiny_bundle_path)
    at = open_page(monkeypatch, server.url)
    at.button(key="sample-healthy_1").click().run()
    assert len(results(at)) == 1
    server.stop()
    at.button(key="send-r1-0").click().run()
    assert_no_page_failure(at)
    assert any("Correction not sent" in e and "Cannot reach the API" in e for e in values(at.main.error))


# ---------------------------------------------------------------- correctness on the shipped model


def test_page_names_the_right_condition_with_the_shipped_model(monkeypatch, shipped_server):
    at = open_page(monkeypatch, shipped_server.url)
    leaves = [sample("Early_blight_1"), sample("Yellow_Leaf_Curl_Virus_2"), sample("healthy_1")]
    upload(at, [as_upload(p) for p in leaves])
    assert results(at) == [DISPLAY_NAMES[class_of(p)] for p in leaves]
    assert not [p.proto.text for p in at.main.progress if "100" in p.proto.text]  # never "Confidence 100.0%"
    card = requests.get(shipped_server.url + "/v1/model", timeout=10).json()
    text = details_text(at)
    assert card["name"] in text
    accuracy = card.get("metrics", {}).get("accuracy")
    if accuracy is not None:  # written into the bundle by `model.evaluate --store`
        assert f"Test accuracy:** {accuracy:.1%}" in text
    else:
        assert "Test accuracy: not recorded" in text


# ---------------------------------------------------------------- failure states


def test_api_down_gives_a_friendly_message(monkeypatch):
    port = free_port()
    closed = f"http://127.0.0.1:{port}"  # nothing listens there: connection refused
    at = open_page(monkeypatch, closed)
    assert "API unreachable" in details_text(at)
    gallery = [c for tab in at.tabs for c in values(tab.caption)]
    assert "Leaf mold" in gallery and "Leaf_Mold" not in gallery  # the page's own names, not code names
    at.button(key="sample-Late_blight_1").click().run()
    assert_no_page_failure(at)
    message = error_text(at)
    assert f"Cannot reach the API at {closed}" in message
    assert f"python flask_server.py --port {port}" in message  # the port the page uses, not the default
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
                     "notes.png is not a photo the checker can read.", id="415-not-an-image"),
        pytest.param([("cut.jpg", sample("Early_blight_1").read_bytes()[:3000], "image/jpeg")],
                     "cut.jpg is incomplete", id="400-truncated-jpeg"),
        pytest.param([("huge.png", _png(500), "image/png")], "huge.png has too many pixels", id="413-too-many-pixels"),
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
        assert "Model failed to load" in details_text(at)
        at.button(key="sample-Bacterial_spot_1").click().run()
        assert_no_page_failure(at)
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
        assert "API unreachable" in details_text(at)
        at.button(key="sample-Spider_mites_1").click().run()
        assert_no_page_failure(at)
        assert f"The API at {url} did not answer within 1 s" in error_text(at)
