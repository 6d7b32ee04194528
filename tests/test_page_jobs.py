"""The page's "Many photos" tab (streamlit.py) with Streamlit's AppTest, over real HTTP to a real API whose bulk jobs
run on the session's real Redis and model workers."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from support import LiveServer, class_of, sample_files

import streamlit
from model.data import DISPLAY_NAMES

PAGE = str(Path(__file__).resolve().parent.parent / "streamlit.py")
RUN_TIMEOUT = 300  # one script run follows the whole job


@pytest.fixture(autouse=True)
def clean_page_state(monkeypatch):
    streamlit.cache_data.clear()
    streamlit.cache_resource.clear()
    for name in ("TOMATO_API_URL", "TOMATO_API_TOKEN", "TOMATO_API_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    yield
    streamlit.cache_data.clear()
    streamlit.cache_resource.clear()


def run_many(monkeypatch, api_url: str, files: list[tuple[str, bytes, str]]) -> AppTest:
    monkeypatch.setenv("TOMATO_API_URL", api_url)
    at = AppTest.from_file(PAGE, default_timeout=RUN_TIMEOUT)
    at.run()
    assert [tab.label for tab in at.tabs][-1] == "Many photos"
    at.file_uploader(key="many_uploads").set_value(files)
    at.button(key="check_many").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_many_photos_tab_runs_a_bulk_job_and_offers_the_csv(monkeypatch, cluster_api):
    leaves = sample_files()[:6]
    files = [(p.name, p.read_bytes(), "image/jpeg") for p in leaves] + [("notes.jpg", b"not a photo", "image/jpeg")]
    at = run_many(monkeypatch, cluster_api.url, files)
    (tab,) = [tab for tab in at.tabs if tab.label == "Many photos"]
    (bar,) = tab.get("progress")
    assert bar.proto.value == 100 and "7 of 7 photos checked" in bar.proto.text
    (table,) = tab.dataframe
    rows = table.value.to_dict("records")
    assert [row["photo"] for row in rows] == [name for name, _, _ in files]
    for row, path in zip(rows, leaves):
        assert row["verdict"] == "Diagnosed" and row["condition"] == DISPLAY_NAMES[class_of(path)]
    assert rows[-1]["verdict"] == "Not checked" and rows[-1]["problem"]
    (download,) = tab.get("download_button")
    assert download.proto.label == "Download CSV"
    assert "7 photos checked" in [h.value for h in tab.subheader]


def test_many_photos_tab_says_when_the_job_queue_is_down(monkeypatch, tiny_bundle_path, tmp_path):
    server = LiveServer(tiny_bundle_path, tmp_path, workers=1)  # its jobs point at a closed port (conftest)
    try:
        server.wait_ready()
        path = sample_files()[0]
        at = run_many(monkeypatch, server.url, [(path.name, path.read_bytes(), "image/jpeg")])
    finally:
        server.stop()
    errors = " | ".join(e.value for e in at.error)
    assert "Checking many photos is not available right now" in errors
    assert not [tab for tab in at.tabs if tab.label == "Many photos"][0].get("progress")
