"""Tomato leaf check: the demo page in front of the classifier API.

Launch with `streamlit run streamlit.py` (never `python streamlit.py`: this file shares the package's name).
The page is a plain HTTP client of flask_server.py, like any other: it imports requests and streamlit (plus
Pillow and Altair, which ship with streamlit), never torch or the model, so it starts in seconds and can run
on a machine without the model.

Environment (all optional):
  TOMATO_API_URL         the API's base URL (default http://127.0.0.1:5000; the sidebar can override it)
  TOMATO_LOW_CONFIDENCE  below this probability a result carries a warning (default 0.6)
  TOMATO_API_TIMEOUT     seconds to wait for /predict and /feedback (default 30)
  TOMATO_API_TOKEN       sent as "Authorization: Bearer ..." when the API is started with a token
"""
from __future__ import annotations

import io
import json
import logging
import mimetypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import streamlit as st
from PIL import Image  # ships with streamlit; only to preview formats browsers can't show, never for inference

HERE = Path(__file__).resolve().parent
SAMPLES_DIR = HERE / "inference_image"
DISEASE_INFO_PATH = HERE / "assets" / "disease_info.json"
DEFAULT_API_URL = "http://127.0.0.1:5000"
IMAGE_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"]
BROWSER_IMAGE_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}  # others are re-encoded to preview
LOW_CONFIDENCE_WARNING = "Low confidence — this may not be a tomato leaf or the photo is unclear"
STATUS_TIMEOUT_S = 3.0  # /readyz and /v1/model are cheap: a slow answer means trouble, don't hang the sidebar
SAMPLE_COLUMNS = 10  # two rows for the 20 bundled leaves, so results stay near

log = logging.getLogger("tomato.page")


# ---------------------------------------------------------------- settings and small data types


def env_float(name: str, default: float) -> float:
    """A number from the environment; a typo falls back to the default rather than breaking the page."""
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        log.warning("ignoring %s=%r: not a number", name, os.environ.get(name))
        return default


@dataclass(frozen=True)
class Settings:
    """What one run of the page needs to talk to the API and judge its answers."""

    api_url: str  # base URL without a trailing slash
    top_k: int  # length of each result's top-k list
    low_confidence: float  # warn below this probability
    timeout_s: float  # for /predict and /feedback


@dataclass(frozen=True)
class ImageFile:
    """One image as the user gave it: the bytes we send to the API and show back."""

    name: str
    data: bytes
    mime: str


@dataclass(frozen=True)
class Outcome:
    """The last submit's result, kept in session state so reruns (e.g. sending feedback) still show it."""

    number: int  # counts submits in this browser session; part of widget keys so old forms never clash
    images: list[ImageFile]
    names: dict[str, str]  # class_name -> words, as the API said when it answered (feedback reuses them)
    body: dict[str, Any] | None = None  # the /predict JSON on success
    problem: ApiProblem | None = None  # why it failed otherwise


class ApiProblem(Exception):
    """A failed API call, already worded for the grower: what happened and what to do about it."""

    def __init__(self, title: str, advice: str, status: int | None = None, code: str = "", message: str = "") -> None:
        super().__init__(f"{title} {advice}")
        self.title = title
        self.advice = advice
        self.status = status  # HTTP status, None when no answer came
        self.code = code  # the API's error code, e.g. "not_ready"
        self.message = message  # the API's own message, for decisions the page makes


# ---------------------------------------------------------------- HTTP client (requests only)


@st.cache_resource
def http_session() -> requests.Session:
    """One pooled session per page process: keep-alive saves a connection setup on every call."""
    return requests.Session()


def auth_headers() -> dict[str, str]:
    """The API's bearer token when one is configured; POST endpoints refuse requests without it."""
    token = os.environ.get("TOMATO_API_TOKEN", "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def error_of(response: requests.Response) -> tuple[str, str]:
    """(code, message) from the API's `{"error": {"code", "message"}}` body; tolerant of non-JSON proxies."""
    try:
        error = response.json()["error"]
        return str(error.get("code", "")), str(error.get("message", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        return "", response.text.strip()[:200]


def problem_from_response(response: requests.Response) -> ApiProblem:
    """Map each error status the API documents to a message that says what to do next."""
    status = response.status_code
    code, message = error_of(response)
    retry = response.headers.get("Retry-After", "").strip()
    wait = f"{retry} second{'s' if retry != '1' else ''}" if retry.isdigit() else "a few seconds"
    detail = f" ({message})" if message else ""
    title, advice = {
        400: (f"The API could not use the image{detail}.",
              "Check that each file is a complete, readable photo; re-save or re-take it and try again."),
        401: ("The API needs an access token.", "Start the page with TOMATO_API_TOKEN set to the API's token."),
        413: (f"Too large for the API{detail}.",
              "Send fewer photos at once, or smaller ones (a few megapixels is plenty)."),
        415: (f"The API does not accept this file type{detail}.", "Use a JPEG, PNG, WebP, BMP, TIFF or GIF photo."),
        429: ("The API is busy right now.", f"Wait {wait} and submit again."),
        503: (f"The model is not ready{detail}.", f"Wait {wait} and try again; if it lasts, check the API's log."),
        504: ("The model did not answer in time.",
              "The server is overloaded: try again in a moment, or with fewer photos."),
    }.get(status, (f"The API answered with error {status}{detail}.", "Try again; if it repeats, check the API's log."))
    return ApiProblem(title, advice, status, code, message)


def call_api(method: str, base_url: str, path: str, timeout_s: float, **kwargs: Any) -> dict[str, Any]:
    """One request; every failure becomes an `ApiProblem`, so the page shows a message and never a traceback."""
    try:
        response = http_session().request(method, base_url + path, timeout=timeout_s, headers=auth_headers(),
                                          **kwargs)
    except requests.Timeout:  # before ConnectionError: a connect timeout is both
        raise ApiProblem(f"The API at {base_url} did not answer within {timeout_s:g} s.",
                         "It may be overloaded or stuck: try again in a moment, with fewer photos.") from None
    except requests.ConnectionError:
        raise ApiProblem(f"Cannot reach the API at {base_url}.",
                         "Start it with `python flask_server.py` (or `make run`), "
                         "or correct the API URL in the sidebar.") from None
    except requests.RequestException as exc:  # e.g. a malformed URL typed in the sidebar
        raise ApiProblem(f"The API URL {base_url!r} cannot be used ({type(exc).__name__}).",
                         "Enter a URL like http://127.0.0.1:5000 in the sidebar.") from None
    if response.status_code >= 400:
        raise problem_from_response(response)
    try:
        return response.json()
    except ValueError:
        raise ApiProblem(f"The server at {base_url} did not answer like the tomato API.",
                         "Check the API URL in the sidebar.", response.status_code) from None


def fetch_ready(base_url: str) -> dict[str, Any]:
    """GET /readyz: 200 once the model is loaded and warm, 503 while it loads. Not cached: it is the live badge."""
    return call_api("GET", base_url, "/readyz", STATUS_TIMEOUT_S)


@st.cache_data(ttl=60, show_spinner=False)
def fetch_model_info(base_url: str) -> dict[str, Any]:
    """GET /v1/model: name, classes and metrics change only on redeploy, so a minute's cache is safe.

    Failures raise and are not cached, so the next run asks again.
    """
    return call_api("GET", base_url, "/v1/model", STATUS_TIMEOUT_S)


def predict(base_url: str, images: list[ImageFile], top_k: int, timeout_s: float) -> dict[str, Any]:
    """POST /predict with every image of one submit as a `file` part: one request, one batch on the server."""
    files = [("file", (image.name, image.data, image.mime)) for image in images]
    return call_api("POST", base_url, "/predict", timeout_s, params={"top_k": top_k}, files=files)


def send_feedback(base_url: str, image: ImageFile, correct_class: str, predicted_class: str | None,
                  comment: str, timeout_s: float) -> dict[str, Any]:
    """POST /feedback: the image and the grower's correction, stored server-side to improve the next model."""
    form = {"correct_class": correct_class}
    if predicted_class:
        form["predicted_class"] = predicted_class
    if comment.strip():
        form["comment"] = comment.strip()
    return call_api("POST", base_url, "/feedback", timeout_s, data=form,
                    files={"file": (image.name, image.data, image.mime)})


# ---------------------------------------------------------------- local data


@st.cache_data(ttl=600, show_spinner=False)
def load_disease_info(path: str = str(DISEASE_INFO_PATH)) -> dict[str, Any]:
    """Description and usual action per class, from a data file an agronomist can edit without touching code."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
        return {"note": str(info.get("note", "")), "diseases": dict(info.get("diseases", {}))}
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("disease table %s unusable: %s", path, exc)
        return {"note": "", "diseases": {}}


def sample_images() -> list[Path]:
    """The bundled test-split leaves, named `<class>_<n>.jpg`."""
    return sorted(SAMPLES_DIR.glob("*.jpg"))


def class_of_sample(path: Path) -> str:
    return path.stem.rsplit("_", 1)[0]


def guess_mime(name: str) -> str:
    """Content type for a file part when the browser gave none; the API reads the bytes either way."""
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def display_names(model: dict[str, Any] | None) -> dict[str, str]:
    """class_name -> words, from the API's class list (the one source of labels)."""
    return {c["class_name"]: c["display_name"] for c in (model or {}).get("classes", [])}


# ---------------------------------------------------------------- UI pieces


def sidebar_ui() -> tuple[Settings, dict[str, Any] | None]:
    """API address and options out of the main flow, plus a badge saying whether submitting can work."""
    with st.sidebar:
        st.header("Classifier API")
        url = st.text_input("API URL", value=os.environ.get("TOMATO_API_URL", DEFAULT_API_URL), key="api_url",
                            help="Where flask_server.py listens. Default from the TOMATO_API_URL environment variable.")
        base_url = url.strip().rstrip("/")
        if base_url and "://" not in base_url:  # "localhost:5000" is what people type
            base_url = "http://" + base_url
        model = status_ui(base_url)
        top_k = st.slider("Classes to list per photo (top-k)", 1, 5, 3, key="top_k")
        low = env_float("TOMATO_LOW_CONFIDENCE", 0.6)
        st.caption(f"Results below {low:.0%} confidence get a warning (TOMATO_LOW_CONFIDENCE).")
    timeout_s = env_float("TOMATO_API_TIMEOUT", 30.0)
    n_classes = len(display_names(model)) or top_k
    return Settings(base_url, min(top_k, n_classes), low, timeout_s), model


def status_ui(base_url: str) -> dict[str, Any] | None:
    """Status badge from /readyz, then the model card summary from /v1/model; returns the model info or None."""
    try:
        fetch_ready(base_url)
    except ApiProblem as problem:
        if problem.status == 503 and "failed to load" in problem.message:
            st.badge("Model failed to load", icon=":material/error:", color="red")
        elif problem.status == 503:
            st.badge("Model loading", icon=":material/hourglass_top:", color="orange")
        else:
            st.badge("API unreachable", icon=":material/error:", color="red")
        st.caption(f"{problem.title} {problem.advice}")
        return None
    try:
        model = fetch_model_info(base_url)
    except ApiProblem as problem:
        st.badge("API answers, model info missing", icon=":material/warning:", color="orange")
        st.caption(f"{problem.title} {problem.advice}")
        return None
    st.badge("API ready", icon=":material/check_circle:", color="green")
    st.markdown(f"**Model:** {model.get('name', '?')} {model.get('version', '')}".rstrip())
    accuracy = (model.get("metrics") or {}).get("accuracy")
    if isinstance(accuracy, (int, float)):
        images = (model.get("metrics") or {}).get("test_images")
        st.markdown(f"**Test accuracy:** {accuracy:.1%}" + (f" on {images} held-out photos" if images else ""))
    else:
        st.caption("Test accuracy: not recorded in this model.")
    names = display_names(model)
    with st.expander(f"{len(names)} conditions it knows"):
        st.markdown("\n".join(f"- {name}" for name in names.values()))
    return model


def upload_form_ui() -> list[ImageFile]:
    """Photos are chosen inside a form: picking files neither reruns the page nor calls the API until submit."""
    with st.form("upload", clear_on_submit=False, border=False):
        files = st.file_uploader("Leaf photos (one or several)", type=IMAGE_TYPES, accept_multiple_files=True,
                                 key="uploads",
                                 help="One leaf per photo, filling most of the frame, in daylight, in focus.")
        submitted = st.form_submit_button("Check leaves", type="primary", key="check", icon=":material/search:")
    if not submitted:
        return []
    if not files:
        st.info("Choose one or more photos first, then press **Check leaves**.")
        return []
    return [ImageFile(f.name, f.getvalue(), f.type or guess_mime(f.name)) for f in files]


def sample_picker_ui(names: dict[str, str]) -> list[ImageFile]:
    """One click on a bundled leaf checks it: a way to try the model without a photo at hand."""
    samples = sample_images()
    if not samples:
        st.caption(f"No sample leaves found in {SAMPLES_DIR}.")
        return []
    st.caption("Leaves from the model's held-out test set; the caption is the true condition.")
    chosen: Path | None = None
    for start in range(0, len(samples), SAMPLE_COLUMNS):  # one row at a time: narrow screens stack them in order
        for column, path in zip(st.columns(SAMPLE_COLUMNS), samples[start:start + SAMPLE_COLUMNS]):
            cls = class_of_sample(path)
            with column:
                st.image(str(path), width="stretch")
                if st.button("Check", key=f"sample-{path.stem}", width="stretch", help=f"Check {path.name}"):
                    chosen = path
                st.caption(names.get(cls, cls.replace("_", " ")))  # under the button: buttons stay in line
    return [ImageFile(chosen.name, chosen.read_bytes(), "image/jpeg")] if chosen else []


def classify(settings: Settings, images: list[ImageFile], names: dict[str, str]) -> None:
    """Send one submit's images in a single request and keep the outcome for this and later reruns."""
    number = st.session_state.get("outcome_number", 0) + 1
    st.session_state["outcome_number"] = number
    with st.spinner(f"Checking {len(images)} photo{'s' if len(images) > 1 else ''}…"):
        try:
            body = predict(settings.api_url, images, settings.top_k, settings.timeout_s)
            outcome = Outcome(number, images, names, body=body)
        except ApiProblem as problem:
            outcome = Outcome(number, images, names, problem=problem)
    st.session_state["outcome"] = outcome


def problem_ui(problem: ApiProblem) -> None:
    st.error(f"**{problem.title}** {problem.advice}", icon=":material/error:")


def results_ui(settings: Settings) -> None:
    """The last submit's results, one block per photo, or the reason there are none."""
    outcome: Outcome | None = st.session_state.get("outcome")
    if outcome is None:
        return
    if outcome.problem is not None:
        problem_ui(outcome.problem)
        return
    body = outcome.body or {}
    predictions = body.get("predictions", [])
    total_ms = (body.get("timing_ms") or {}).get("total")
    st.subheader(f"Results for {len(predictions)} photo{'s' if len(predictions) != 1 else ''}")
    info = load_disease_info()
    for index, (image, prediction) in enumerate(zip(outcome.images, predictions)):
        result_ui(settings, outcome.names, info, image, prediction, total_ms, key=f"r{outcome.number}-{index}")
    if info["note"]:
        st.caption(info["note"])


def result_ui(settings: Settings, names: dict[str, str], info: dict[str, Any], image: ImageFile,
              prediction: dict[str, Any], total_ms: float | None, key: str) -> None:
    """One photo: what it shows, how sure the model is, the alternatives, what to do, and a way to correct it."""
    with st.container(border=True):
        left, right = st.columns([1, 2], gap="medium")
        with left:
            preview_ui(image)
        with right:
            st.subheader(prediction.get("display_name", prediction.get("class_name", "?")))
            probability = float(prediction.get("probability", 0.0))
            if probability < settings.low_confidence:
                st.warning(LOW_CONFIDENCE_WARNING, icon=":material/warning:")
            st.progress(min(max(probability, 0.0), 1.0), text=f"Confidence {probability:.1%}")
            top_k_ui(prediction.get("top_k", []))
            disease_ui(info, prediction.get("class_name", ""))
            timing_ui(prediction, total_ms)
            feedback_ui(settings, names, image, prediction, key)


def preview_ui(image: ImageFile) -> None:
    """Show the photo; browsers can't display TIFF (or every BMP), so those are re-encoded for display only."""
    if image.mime in BROWSER_IMAGE_TYPES:
        st.image(image.data, caption=image.name, width="stretch")
        return
    try:
        with Image.open(io.BytesIO(image.data)) as img:
            img.thumbnail((800, 800))
            st.image(img.convert("RGB"), caption=image.name, width="stretch")
    except (OSError, ValueError, Image.DecompressionBombError):  # the API read it, the preview can't: keep the result
        st.caption(f"{image.name} (no preview)")


def top_k_ui(top_k: list[dict[str, Any]]) -> None:
    """The alternatives the model weighed, best first, on a 0-100 % scale: a close second is worth a look."""
    if len(top_k) < 2:
        return
    import altair as alt  # ships with streamlit; st.bar_chart can't fix the 0-1 scale or keep long names whole

    rows = [{"condition": s["display_name"], "probability": float(s["probability"])} for s in top_k]
    chart = (
        alt.Chart(alt.Data(values=rows))
        .mark_bar()
        .encode(
            x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%", title=None)),
            y=alt.Y("condition:N", sort="-x", axis=alt.Axis(title=None, labelLimit=320)),
            tooltip=["condition:N", alt.Tooltip("probability:Q", format=".1%")],
        )
        .properties(height=28 * len(rows) + 30)
    )
    st.altair_chart(chart, width="stretch")


def disease_ui(info: dict[str, Any], class_name: str) -> None:
    """A short description and what growers usually do, from assets/disease_info.json."""
    entry = info["diseases"].get(class_name)
    if not entry:
        st.caption("No description for this condition yet.")
        return
    st.markdown(f"**{entry.get('cause', '')}.** {entry.get('about', '')}")
    steps = entry.get("what_to_do", [])
    if steps:
        st.markdown("**What growers usually do**\n" + "\n".join(f"- {step}" for step in steps))


def timing_ui(prediction: dict[str, Any], total_ms: float | None) -> None:
    """Where the time went, small: useful to a developer, noise to a grower."""
    timing = prediction.get("timing_ms") or {}
    parts = [f"{name} {timing[name]:.1f} ms" for name in ("decode", "queue", "inference") if name in timing]
    if total_ms is not None:
        parts.append(f"whole request {total_ms:.0f} ms")
    if prediction.get("batch_size"):
        parts.append(f"batch of {prediction['batch_size']}")
    st.caption("Timing: " + " · ".join(parts))


def feedback_ui(settings: Settings, names: dict[str, str], image: ImageFile, prediction: dict[str, Any],
                key: str) -> None:
    """'This is wrong': the correct class goes to /feedback with the photo, so the next model can learn it."""
    status_key = f"feedback-status-{key}"
    with st.expander("This is wrong?", expanded=status_key in st.session_state):
        # the API's own class list: every class it scored, in its order
        classes = list(prediction.get("probabilities") or names)
        if not classes:
            st.caption("Corrections need the API's class list: check the API status in the sidebar.")
            return
        labels = {c: names.get(c) or c.replace("_", " ") for c in classes}
        predicted = prediction.get("class_name")
        runner_up = next((s["class_name"] for s in prediction.get("top_k", []) if s["class_name"] != predicted), None)
        default = classes.index(runner_up) if runner_up in classes else 0
        with st.form(f"feedback-{key}", border=False):
            correct = st.selectbox("What is it really?", classes, index=default, format_func=labels.get,
                                   key=f"correct-{key}")
            comment = st.text_input("Comment (optional)", key=f"comment-{key}", max_chars=2000)
            sent = st.form_submit_button("Send correction", key=f"send-{key}")
        if sent:
            try:
                reply = send_feedback(settings.api_url, image, correct,
                                      predicted if predicted in labels else None, comment, settings.timeout_s)
                st.session_state[status_key] = ("ok", f"Thank you: correction stored (id {reply.get('id', '?')}).")
            except ApiProblem as problem:
                st.session_state[status_key] = ("error", f"Correction not sent. {problem.title} {problem.advice}")
        outcome = st.session_state.get(status_key)
        if outcome:
            kind, message = outcome
            (st.success if kind == "ok" else st.error)(message)


def header_ui() -> None:
    st.title("Tomato leaf check")
    st.markdown("Upload photos of tomato leaves to see which of ten common conditions each one most likely shows, "
                "how sure the model is, and what growers usually do about it.")


def main() -> None:
    """The page top to bottom: settings, input (upload or sample), then the results of the last submit."""
    st.set_page_config(page_title="Tomato leaf check", page_icon="🍅", layout="wide")
    settings, model = sidebar_ui()
    header_ui()
    upload_tab, sample_tab = st.tabs(["Your photos", "Sample leaves"])
    with upload_tab:
        images = upload_form_ui()
    with sample_tab:
        images = sample_picker_ui(display_names(model)) or images
    if images:
        classify(settings, images, display_names(model))
    results_ui(settings)


def run_page() -> None:
    """Safety net: whatever slips through, the grower sees a sentence, not a traceback (the log keeps it)."""
    try:
        main()
    except Exception:
        log.exception("page failed")
        st.error("Something went wrong on this page. Reload it; if it happens again, check the page's log.",
                 icon=":material/error:")


if __name__ == "__main__":
    run_page()
