"""End to end, as a person would use it: the real page (`streamlit run streamlit.py`) in real headless Chromium,
talking over HTTP to a real API on the shipped model. A leaf goes through the page's real file input.

Needs Debian's `chromium` and `chromium-driver` (`make browser` installs them). The screenshot of the finished page
is the README's (docs/page_screenshot.png), so it always shows the page and model as they are.

The page is started the way `make run` starts it: `streamlit run streamlit.py` with only a port, so the settings in
.streamlit/config.toml (loopback only, no file watching) are the ones checked.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests
from support import NOT_LEAF_SAMPLES, ROOT, class_of, free_port

from model.data import DISPLAY_NAMES

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = ROOT / "docs" / "page_screenshot.png"  # shown in README.md
LEAF = ROOT / "inference_image" / "Early_blight_1.jpg"
SAMPLE_CLICKED = "Leaf_Mold_1"  # a sample tile in the second row, far below where its result appears
WAIT_S = 120  # the CI machine has 2 cores: Chromium, Streamlit and the API share them


def start_page(api_url: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    """`streamlit run streamlit.py` from the venv next to this interpreter, on a free port, until it is healthy."""
    port = free_port()
    streamlit_bin = Path(sys.executable).with_name("streamlit")
    env = {**os.environ, "TOMATO_API_URL": api_url, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:  # the child keeps its own copy of the file descriptor
        process = subprocess.Popen(  # settings from .streamlit/config.toml, as `make run` uses them
            [str(streamlit_bin), "run", "streamlit.py", "--server.port", str(port)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + WAIT_S
    try:
        while time.time() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"streamlit exited early:\n{log_path.read_text()}")
            try:
                if requests.get(url + "/_stcore/health", timeout=5).status_code == 200:
                    return process, url
            except requests.RequestException:  # not listening yet, or slow on a loaded machine
                pass
            time.sleep(0.3)
        raise TimeoutError(f"streamlit not healthy after {WAIT_S}s:\n{log_path.read_text()}")
    except BaseException:
        stop(process)
        raise


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def inotify_watches(pid: int) -> int:
    """File-system watches a process holds (Linux): each watched folder is one "inotify wd:" line."""
    total = 0
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            total += info.read_text().count("inotify wd:")
        except OSError:
            pass
    return total


@pytest.fixture
def page(shipped_server, tmp_path) -> Iterator[tuple[subprocess.Popen, str]]:
    process, url = start_page(shipped_server.url, tmp_path / "streamlit.log")
    try:
        yield process, url
    finally:
        stop(process)


def test_the_page_process_follows_its_config_file(page):
    """No file watching (it burned CPU on .venv's thousands of folders) and loopback only, without any flag."""
    process, url = page
    assert inotify_watches(process.pid) == 0
    listening = [c.laddr for c in psutil.Process(process.pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and all(address.ip == "127.0.0.1" for address in listening), listening


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium with the flags a closed network needs (no background lookups, no first-run prompts)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        assert path.is_file(), f"{path} is missing: run `make browser` (apt-get install chromium chromium-driver)"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-extensions", "--window-size=1400,1300",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log")),
                              options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def test_upload_a_leaf_in_a_real_browser(page, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    _, page_url = page
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(page_url)
    file_input = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]")))
    wait.until(lambda d: "API ready" in d.execute_script("return document.body.textContent"))  # inside Details

    file_input.send_keys(str(LEAF))  # the browser uploads it to the Streamlit server, as a drag-and-drop would
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "[data-testid=stFileUploader]"), LEAF.name))
    submit = wait.until(EC.element_to_be_clickable(
        (By.XPATH, "//button[@kind='primaryFormSubmit' or .//p[normalize-space()='Check leaves']]")))
    submit.click()

    wait.until(EC.text_to_be_present_in_element((By.TAG_NAME, "h3"), "Results for 1 photo"))
    wait.until(lambda d: len(d.find_elements(By.TAG_NAME, "h3")) >= 2)
    headings = [h.text.strip() for h in browser.find_elements(By.TAG_NAME, "h3")]
    expected = DISPLAY_NAMES[class_of(LEAF)]
    # every picture loaded (the result photo and the chart), and no script still running, before the screenshot
    wait.until(lambda d: d.execute_script(
        "return [...document.images].every(i => i.complete && i.naturalWidth > 0)"
        " && !document.querySelector('[data-testid=stStatusWidget] button');"))
    wait.until(lambda d: "What growers usually do" in d.find_element(By.TAG_NAME, "body").text)
    time.sleep(1.0)  # let the top-k chart finish its first paint
    body = browser.find_element(By.TAG_NAME, "body").text
    assert expected in headings, (headings, body[:2000])
    assert "Confidence" in body
    assert "Traceback" not in body
    for developer_detail in ("TOMATO_", "tomato-leaf-efficientnet", "Timing", " ms"):  # all inside closed Details
        assert developer_detail not in body, developer_detail
    assert browser.save_screenshot(str(SCREENSHOT)) and SCREENSHOT.stat().st_size > 10_000

    # a photo that is not a tomato leaf, through the same file input: the page says so instead of naming a disease
    not_a_leaf = tmp_path / "photo.jpg"  # a short name: the uploader shortens long ones on screen
    not_a_leaf.write_bytes(NOT_LEAF_SAMPLES[0].read_bytes())
    file_input = browser.find_element(By.CSS_SELECTOR, "input[type=file]")
    file_input.send_keys(str(not_a_leaf))
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "[data-testid=stFileUploader]"), not_a_leaf.name))
    browser.find_element(By.XPATH, "//button[@kind='primaryFormSubmit' or .//p[normalize-space()='Check leaves']]").click()
    wait.until(lambda d: "This doesn't look like a tomato leaf" in [h.text.strip() for h in d.find_elements(By.TAG_NAME, "h3")])
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "One leaf per photo" in body and "Traceback" not in body

    # a sample tile far down the page: its result appears at the top, and the page scrolls up to it
    browser.find_element(By.XPATH, "//*[@role='tab' and contains(., 'Sample leaves')]").click()
    tile = wait.until(EC.element_to_be_clickable((By.XPATH, f"//button[@title='Check {SAMPLE_CLICKED}.jpg'] | "
                                                            f"//div[contains(@class, 'st-key-sample-{SAMPLE_CLICKED}')]//button")))
    browser.execute_script("arguments[0].scrollIntoView({block: 'end'})", tile)
    tile.click()
    wait.until(lambda d: f"{SAMPLE_CLICKED}.jpg" in d.find_element(By.TAG_NAME, "body").text)
    wait.until(lambda d: d.execute_script(
        "const r = document.getElementById('results')?.getBoundingClientRect();"
        " return !!r && r.top >= -5 && r.top < window.innerHeight / 2;"))

