"""Tomato leaf check: the demo page in front of the classifier API.

Launch with `streamlit run streamlit.py` (never `python streamlit.py`: this file shares the package's name).
The page is a plain HTTP client of flask_server.py, like any other: it imports requests and streamlit (plus
Pillow and Altair, which ship with streamlit), never torch or the model, so it starts in seconds and can run
on a machine without the model.

The main view speaks to growers: results first, a plain verdict per photo ("diagnosed", "Not sure", "This doesn't
look like a tomato leaf"), treatment advice only for a confident diagnosis. Everything a developer needs (the API
address, model, thresholds, timings) sits in one "Details" expander at the bottom.

Environment (all optional):
  TOMATO_API_URL         the API's base URL (default http://127.0.0.1:5000; editable under "Details")
  TOMATO_LOW_CONFIDENCE  for an API without per-prediction verdicts: below this probability "Not sure" (default 0.6)
  TOMATO_API_TIMEOUT     seconds to wait for /predict and /feedback (default 30)
  TOMATO_API_TOKEN       sent as "Authorization: Bearer ..." when the API is started with a token
"""
from __future__ import annotations

import base64

import io
import json
import logging
import mimetypes
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import streamlit as st
from PIL import Image, ImageOps  # ships with streamlit; previews and shrinking photos before upload, never inference

HERE = Path(__file__).resolve().parent
SAMPLES_DIR = HERE / "inference_image"
DISEASE_INFO_PATH = HERE / "assets" / "disease_info.json"
DEFAULT_API_URL = "http://127.0.0.1:5000"
IMAGE_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"]
BROWSER_IMAGE_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}  # others are re-encoded to preview
STATUS_TIMEOUT_S = 3.0  # /readyz and /v1/model are cheap: a slow answer means trouble, don't hang the page
SAMPLE_COLUMNS = 10  # two rows for the 20 bundled leaves
# Limits the page keeps to, so no upload is ever refused for its size: the API's MAX_CONTENT_LENGTH (20 MiB per
# request) and MAX_FILES (16 per request); .streamlit/config.toml's maxUploadSize (20 MB per file) is what the
# uploader shows. Photos are shrunk first (the model looks at 160 px), and several photos go in as many requests
# as their size needs.
MAX_REQUEST_BYTES = 20 * 1024 * 1024 - 256 * 1024  # minus room for the multipart framing
MAX_FILES_PER_REQUEST = 16
UPLOAD_SIDE = 1024  # photos with a longer side are shrunk to this before upload: ~100-300 KB instead of 3-12 MB
VERDICTS = ("diagnosed", "uncertain", "not_tomato_leaf")
VERDICT_WORDS = {"diagnosed": "Diagnosed", "uncertain": "Not sure", "not_tomato_leaf": "Not a tomato leaf"}
JOB_POLL_S = 0.5  # how often the "Many photos" tab asks the API for the job's progress
JOB_WAIT_S = 3600.0  # after this the tab stops following a job (its results stay on the server until the TTL)
NOT_A_LEAF = "not_tomato_leaf"  # the feedback form's extra choice, sent as correct_class
PHOTO_TIPS = ["One leaf per photo.", "Let the leaf fill most of the frame.", "Take it in daylight, in focus."]
REASON_WORDS = {  # the API's verdict_reason, said for a grower
    "greyscale": "The photo has no colour; the model needs a colour photo.",
    "dark": "The photo is too dark.",
    "blurred": "The photo is blurred.",
    "classes_close": "Two conditions look alike in this photo.",
    "not_leaf_like": "It does not look like a photo of a tomato leaf.",
}
IMAGE_PROBLEMS = {  # the API's per-image error codes: (what happened, what to do)
    "not_an_image": ("{name} is not a photo the checker can read.", "Use a JPEG, PNG, WebP, BMP, TIFF or GIF photo."),
    "empty_file": ("{name} is empty.", "Choose the photo again."),
    "truncated_image": ("{name} is incomplete (the file is cut off).", "Re-save or re-take the photo and try again."),
    "corrupt_image": ("{name} is damaged.", "Re-save or re-take the photo and try again."),
    "image_too_large": ("{name} has too many pixels to check.", "Use a smaller photo: a few megapixels is plenty."),
}

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
class ImageResult:
    """One photo of a submit: the API's prediction for it, or why it has none."""

    image: ImageFile  # as sent (after shrinking)
    prediction: dict[str, Any] | None = None
    problem: ApiProblem | None = None


@dataclass(frozen=True)
class Outcome:
    """The last submit's result, kept in session state so reruns (e.g. sending feedback) still show it."""

    number: int  # counts submits in this browser session; part of widget keys so old forms never clash
    results: list[ImageResult]
    names: dict[str, str]  # class_name -> words, as the API said when it answered (feedback reuses them)
    total_ms: float | None = None  # the API's own time for the request(s), for the Details

    def answered(self) -> bool:
        return any(r.prediction is not None for r in self.results)

    def problems(self) -> list[ApiProblem]:
        """The distinct reasons photos went unanswered, in order (one 'busy' for sixteen photos, not sixteen)."""
        seen: dict[str, ApiProblem] = {}
        for result in self.results:
            if result.problem is not None:
                seen.setdefault(f"{result.problem.title} {result.problem.advice}", result.problem)
        return list(seen.values())


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


def image_problem(code: str, name: str, status: int | None = None, message: str = "") -> ApiProblem | None:
    """The grower's words for a photo the API could not use (by the API's error code), or None for other codes."""
    if code not in IMAGE_PROBLEMS:
        return None
    title, advice = IMAGE_PROBLEMS[code]
    return ApiProblem(title.format(name=name), advice, status, code, message)


def problem_from_response(response: requests.Response, name: str = "The photo") -> ApiProblem:
    """Map each error status the API documents to a message that says what to do next; `name` is the photo's
    file name when the request carried one photo."""
    status = response.status_code
    code, message = error_of(response)
    per_image = image_problem(code, name, status, message)
    if per_image is not None:
        return per_image
    retry = response.headers.get("Retry-After", "").strip()
    wait = f"{retry} second{'s' if retry != '1' else ''}" if retry.isdigit() else "a few seconds"
    detail = f": {message.rstrip('.')}" if message else ""
    if code == "queue_unavailable":  # the bulk-job queue, not the model: single photos still work
        return ApiProblem("Checking many photos is not available right now (the job queue is down).",
                          f"Wait {wait} and try again, or check a few photos under \"Your photos\".", status, code,
                          message)
    if code == "too_many_images":
        return ApiProblem(f"Too many photos for one check{detail}.", "Split them into smaller batches.", status,
                          code, message)
    title, advice = {
        400: (f"The checker could not use the request{detail}.", "Check the photos and try again."),
        401: ("The checker needs an access token.", "Start the page with TOMATO_API_TOKEN set to the API's token."),
        413: ("The photos are too large to send together.", "Send fewer photos at once."),
        415: (f"The checker does not accept this kind of request{detail}.", "Upload JPEG, PNG, WebP, BMP, TIFF or GIF "
                                                                           "photos."),
        429: ("The checker is busy right now.", f"Wait {wait} and submit again."),
        503: (f"The model is not ready{detail}.", f"Wait {wait} and try again; if it lasts, check the API's log."),
        504: ("The model did not answer in time.",
              "The server is overloaded: try again in a moment, or with fewer photos."),
    }.get(status, (f"The checker answered with error {status}{detail}.",
                   "Try again; if it repeats, check the API's log."))
    return ApiProblem(title, advice, status, code, message)


def start_command(base_url: str) -> str:
    """The command that starts an API where the page looks for it (the port the page uses, not a default)."""
    port = requests.utils.urlparse(base_url).port
    return "python flask_server.py" + (f" --port {port}" if port and port != 5000 else "")


def call_api(method: str, base_url: str, path: str, timeout_s: float, name: str = "The photo",
             **kwargs: Any) -> dict[str, Any]:
    """One request; every failure becomes an `ApiProblem`, so the page shows a message and never a traceback."""
    try:
        response = http_session().request(method, base_url + path, timeout=timeout_s, headers=auth_headers(),
                                          **kwargs)
    except requests.Timeout:  # before ConnectionError: a connect timeout is both
        raise ApiProblem(f"The API at {base_url} did not answer within {timeout_s:g} s.",
                         "It may be overloaded or stuck: try again in a moment, with fewer photos.") from None
    except requests.ConnectionError:
        raise ApiProblem(f"Cannot reach the API at {base_url}.",
                         f"Start it with `{start_command(base_url)}` (or `make run`), "
                         "or correct the API URL under Details.") from None
    except requests.RequestException as exc:  # e.g. a malformed URL typed under Details
        raise ApiProblem(f"The API URL {base_url!r} cannot be used ({type(exc).__name__}).",
                         "Enter a URL like http://127.0.0.1:5000 under Details.") from None
    if response.status_code >= 400:
        raise problem_from_response(response, name)
    try:
        return response.json()
    except ValueError:
        raise ApiProblem(f"The server at {base_url} did not answer like the tomato API.",
                         "Check the API URL under Details.", response.status_code) from None


def fetch_ready(base_url: str) -> dict[str, Any]:
    """GET /readyz: 200 once the model is loaded and warm, 503 while it loads. Not cached: it is the live badge."""
    return call_api("GET", base_url, "/readyz", STATUS_TIMEOUT_S)


@st.cache_data(ttl=60, show_spinner=False)
def fetch_model_info(base_url: str) -> dict[str, Any]:
    """GET /v1/model: name, classes and metrics change only on redeploy, so a minute's cache is safe.

    Failures raise and are not cached, so the next run asks again.
    """
    return call_api("GET", base_url, "/v1/model", STATUS_TIMEOUT_S)


def predict(base_url: str, images: list[ImageFile], top_k: int, timeout_s: float,
            explain: bool = False) -> dict[str, Any]:
    """POST /predict with every image of one submit as a `file` part: one request, one batch on the server.
    `explain=True` asks for the class-activation overlay too, which costs the server about 7-10 % more CPU per
    answer (BENCHMARKS.md, "Explanations"): the page asks for it only when someone turns its toggle on."""
    files = [("file", (image.name, image.data, image.mime)) for image in images]
    name = images[0].name if len(images) == 1 else "One of the photos"
    params: dict[str, Any] = {"top_k": top_k, **({"explain": "true"} if explain else {})}
    return call_api("POST", base_url, "/predict", timeout_s, name=name, params=params, files=files)


def submit_job(base_url: str, images: list[ImageFile], timeout_s: float) -> dict[str, Any]:
    """POST /v1/jobs: every photo as a `file` part of one bulk job; the API answers 202 with its status URL."""
    files = [("file", (image.name, image.data, image.mime)) for image in images]
    return call_api("POST", base_url, "/v1/jobs", max(timeout_s, 120.0), name="One of the photos", files=files)


def job_status(base_url: str, status_url: str, timeout_s: float) -> dict[str, Any]:
    """GET /v1/jobs/<id>: state and progress; the results once it is done."""
    return call_api("GET", base_url, status_url, timeout_s)


def job_csv(base_url: str, status_url: str, timeout_s: float) -> str:
    """The finished job's CSV (one row per photo), as the API writes it."""
    response = http_session().get(base_url + status_url, params={"format": "csv"}, headers=auth_headers(),
                                  timeout=timeout_s)
    if response.status_code >= 400:
        raise problem_from_response(response)
    return response.text


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
    """class_name -> words: the API's class list (the one source of labels), or, with the API down, the names in
    assets/disease_info.json, so the sample captions never fall back to code names like "Leaf_Mold"."""
    names = {c["class_name"]: c["display_name"] for c in (model or {}).get("classes", [])}
    if names:
        return names
    return {cls: str(entry.get("name") or cls.replace("_", " ")) for cls, entry in load_disease_info()["diseases"].items()}


def shrink_for_upload(image: ImageFile, max_side: int = UPLOAD_SIDE) -> ImageFile:
    """A photo with a longer side than `max_side` as an upright JPEG of that size (the model sees 160 px), so seven
    phone photos fit one request; anything else, or anything Pillow cannot read here, goes as it is and the API
    answers for it."""
    try:
        with Image.open(io.BytesIO(image.data)) as img:
            if max(img.size) <= max_side:
                return image
            img.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale, far cheaper than full size
            upright = ImageOps.exif_transpose(img)  # re-encoding drops EXIF: apply its orientation first
            if "A" in upright.getbands() or upright.mode == "P":  # transparency onto white, as the API does
                rgba = upright.convert("RGBA")
                upright = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
            upright = upright.convert("RGB")
            upright.thumbnail((max_side, max_side))
            buffer = io.BytesIO()
            upright.save(buffer, "JPEG", quality=90)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        log.info("sending %s unshrunk: %s", image.name, exc)
        return image
    return ImageFile(image.name, buffer.getvalue(), "image/jpeg")


def request_groups(images: list[ImageFile], max_bytes: int = MAX_REQUEST_BYTES,
                   max_files: int = MAX_FILES_PER_REQUEST) -> list[list[ImageFile]]:
    """Split one submit into as few requests as the API's limits allow, in order (usually just one)."""
    groups: list[list[ImageFile]] = []
    size = 0
    for image in images:
        if not groups or len(groups[-1]) >= max_files or size + len(image.data) > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(image)
        size += len(image.data)
    return groups


def verdict_of(prediction: dict[str, Any], low_confidence: float) -> str:
    """The API's verdict; from an older API without one, the old rule: confident enough or "uncertain"."""
    verdict = prediction.get("verdict")
    if verdict in VERDICTS:
        return verdict
    return "diagnosed" if float(prediction.get("probability", 0.0)) >= low_confidence else "uncertain"


def confidence_text(probability: float) -> str:
    """Whole percent, never "100%": a model is never certain, and 0.9995 printed as 100.0 % claims it is."""
    if probability >= 0.995:
        return "over 99%"
    if probability < 0.01:
        return "under 1%"
    return f"{probability:.0%}"


# ---------------------------------------------------------------- UI pieces


def details_ui() -> tuple[Settings, dict[str, Any] | None, ApiProblem | None]:
    """Inside the "Details" expander: the API address and options, whether the API is ready, and the model.

    Returns the settings, the model info (None when the API is not ready) and the reason it is not."""
    url = st.text_input("API URL", value=os.environ.get("TOMATO_API_URL", DEFAULT_API_URL), key="api_url",
                        help="Where flask_server.py listens. Default from the TOMATO_API_URL environment variable.")
    base_url = url.strip().rstrip("/")
    if base_url and "://" not in base_url:  # "localhost:5000" is what people type
        base_url = "http://" + base_url
    model, problem = status_ui(base_url)
    top_k = st.slider("Classes to list per photo (top-k)", 1, 5, 3, key="top_k")
    low = env_float("TOMATO_LOW_CONFIDENCE", 0.6)
    st.caption(f"An API without per-photo verdicts: results below {low:.0%} confidence are shown as \"Not sure\" "
               "(TOMATO_LOW_CONFIDENCE).")
    timeout_s = env_float("TOMATO_API_TIMEOUT", 30.0)
    n_classes = len((model or {}).get("classes", [])) or top_k
    return Settings(base_url, min(top_k, n_classes), low, timeout_s), model, problem


def status_ui(base_url: str) -> tuple[dict[str, Any] | None, ApiProblem | None]:
    """Status badge from /readyz, then the model summary from /v1/model."""
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
        return None, problem
    try:
        model = fetch_model_info(base_url)
    except ApiProblem as problem:
        st.badge("API answers, model info missing", icon=":material/warning:", color="orange")
        st.caption(f"{problem.title} {problem.advice}")
        return None, problem
    st.badge("API ready", icon=":material/check_circle:", color="green")
    st.markdown(f"**Model:** {model.get('name', '?')} {model.get('version', '')}".rstrip())
    accuracy = (model.get("metrics") or {}).get("accuracy")
    if isinstance(accuracy, (int, float)):
        images = (model.get("metrics") or {}).get("test_images")
        st.markdown(f"**Test accuracy:** {accuracy:.1%}" + (f" on {images} held-out photos" if images else ""))
    else:
        st.caption("Test accuracy: not recorded in this model.")
    names = display_names(model)
    st.caption(f"{len(names)} conditions it knows: " + ", ".join(names.values()))
    return model, None


def service_notice_ui(problem: ApiProblem | None) -> None:
    """At the top, in plain words, when checking cannot work right now (the technical reason is under Details)."""
    if problem is None:
        return
    if problem.status == 503 and "failed to load" not in problem.message:
        st.info("The leaf checker is starting up. Try again in a minute.", icon=":material/hourglass_top:")
    else:
        st.warning(f"The leaf checker is not available right now. {problem.title} {problem.advice}",
                   icon=":material/warning:")


def upload_form_ui() -> list[ImageFile]:
    """Photos are chosen inside a form: picking files neither reruns the page nor calls the API until submit."""
    with st.form("upload", clear_on_submit=False, border=False):
        files = st.file_uploader("Leaf photos (one or several)", type=IMAGE_TYPES, accept_multiple_files=True,
                                 key="uploads",
                                 help="One leaf per photo, filling most of the frame, in daylight, in focus. "
                                      "Big phone photos are shrunk before they are sent.")
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
    """Shrink big photos, send them in as few requests as the API's limits allow (usually one, one batch on the
    server), and keep every photo's answer, or its reason for having none, for this and later reruns."""
    number = st.session_state.get("outcome_number", 0) + 1
    st.session_state["outcome_number"] = number
    results: list[ImageResult] = []
    total_ms = 0.0
    with st.spinner(f"Checking {len(images)} photo{'s' if len(images) > 1 else ''}…"):
        for group in request_groups([shrink_for_upload(image) for image in images]):
            try:
                body = predict(settings.api_url, group, settings.top_k, settings.timeout_s)
            except ApiProblem as problem:
                results += [ImageResult(image, problem=problem) for image in group]
                continue
            total_ms += float((body.get("timing_ms") or {}).get("total", 0.0))
            for image, item in zip(group, body.get("predictions", [])):
                if "error" in item:  # this file could not be used; the others of the request were answered
                    error = item.get("error") or {}
                    problem = image_problem(str(error.get("code", "")), image.name, None, str(error.get("message", "")))
                    results.append(ImageResult(image, problem=problem or ApiProblem(
                        f"{image.name} could not be checked: {error.get('message', 'unknown reason')}.",
                        "Try another photo.")))
                else:
                    results.append(ImageResult(image, prediction=item))
    st.session_state["outcome"] = Outcome(number, results, names, total_ms or None)
    st.session_state["scroll_to_results"] = True


def many_photos_ui(settings: Settings, names: dict[str, str]) -> None:
    """Many photos as one bulk job (POST /v1/jobs): model workers score them while a bar shows the progress, then
    a table with each photo's verdict and the CSV to download."""
    with st.form("many", clear_on_submit=False, border=False):
        files = st.file_uploader("Many leaf photos (a season's worth)", type=IMAGE_TYPES, accept_multiple_files=True,
                                 key="many_uploads", help="Checked as one bulk job by the model workers.")
        submitted = st.form_submit_button("Check all", type="primary", key="check_many", icon=":material/checklist:")
    if submitted and not files:
        st.info("Choose photos first, then press **Check all**.")
    elif submitted:
        images = [shrink_for_upload(ImageFile(f.name, f.getvalue(), f.type or guess_mime(f.name))) for f in files]
        try:
            st.session_state["job"] = submit_job(settings.api_url, images, settings.timeout_s)
        except ApiProblem as problem:
            st.session_state.pop("job", None)
            problem_ui(problem)
    job = st.session_state.get("job")
    if job:
        job_ui(settings, names, job)


def job_ui(settings: Settings, names: dict[str, str], job: dict[str, Any]) -> None:
    """Follow the job with a progress bar until it ends, then show its results."""
    bar = st.progress(0.0, text=f"{job['total']} photos queued")
    deadline = time.monotonic() + JOB_WAIT_S
    while True:
        try:
            status = job_status(settings.api_url, job["status_url"], settings.timeout_s)
        except ApiProblem as problem:
            problem_ui(problem)
            return
        progress = status["progress"]
        eta = f", about {progress['eta_s']:.0f} s left" if progress.get("eta_s") else ""
        bar.progress(progress["done"] / max(progress["total"], 1),
                     text=f"{progress['done']} of {progress['total']} photos checked{eta}")
        if status["state"] not in ("queued", "running"):
            break
        if time.monotonic() > deadline:
            st.info("The job is still running. Reload the page later to see its results.")
            return
        time.sleep(JOB_POLL_S)
    if status["state"] != "done":
        problem_ui(ApiProblem(f"The bulk check was {status['state']}.", status.get("error") or "Try again."))
        return
    job_results_ui(settings, names, job, status["results"])


def job_results_ui(settings: Settings, names: dict[str, str], job: dict[str, Any],
                   results: list[dict[str, Any]]) -> None:
    """One table row per photo: verdict in words, condition, confidence or why it could not be checked."""
    rows = []
    for item in results:
        if item["status"] == "ok":
            rows.append({"photo": item["file"], "verdict": VERDICT_WORDS.get(item["verdict"], item["verdict"]),
                         "condition": names.get(item["class_name"], item["display_name"]),
                         "confidence": f"{item['probability']:.0%}", "problem": ""})
        else:
            rows.append({"photo": item["file"], "verdict": "Not checked", "condition": "", "confidence": "",
                         "problem": (item.get("error") or {}).get("message", "")})
    counts = {words: sum(r["verdict"] == words for r in rows) for words in (*VERDICT_WORDS.values(), "Not checked")}
    st.subheader(f"{len(rows)} photos checked", anchor="job-results")
    st.caption(" · ".join(f"{words}: {count}" for words, count in counts.items() if count))
    st.dataframe(rows, hide_index=True, key="job_table")
    try:
        csv_text = job_csv(settings.api_url, job["status_url"], settings.timeout_s)
    except (ApiProblem, requests.RequestException):
        st.caption("The CSV could not be fetched; the table above has every result.")
        return
    st.download_button("Download CSV", csv_text, file_name=f"leaf-check-{job['job_id']}.csv", mime="text/csv",
                       key="job_csv", icon=":material/download:")


def problem_ui(problem: ApiProblem) -> None:
    st.error(f"**{problem.title}** {problem.advice}", icon=":material/error:")


def results_ui(settings: Settings) -> None:
    """The last submit's results, first on the page: one block per photo, or the reason there are none."""
    outcome: Outcome | None = st.session_state.get("outcome")
    if outcome is None:
        return
    if not outcome.answered():
        for problem in outcome.problems():
            problem_ui(problem)
        return
    count = len(outcome.results)
    st.subheader(f"Results for {count} photo{'s' if count != 1 else ''}", anchor="results")
    info = load_disease_info()
    for index, result in enumerate(outcome.results):
        result_ui(settings, outcome.names, info, result, key=f"r{outcome.number}-{index}")
    if info["note"]:
        st.caption(info["note"])
    if st.session_state.pop("scroll_to_results", False):  # once per submit: a sample click happens far below
        st.html("<script>setTimeout(() => window.parent.document.getElementById('results')"
                "?.scrollIntoView({behavior: 'smooth', block: 'start'}), 300)</script>",
                unsafe_allow_javascript=True)


def result_ui(settings: Settings, names: dict[str, str], info: dict[str, Any], result: ImageResult,
              key: str) -> None:
    """One photo: a plain verdict, and treatment advice only when the model is confident of a diagnosis."""
    with st.container(border=True):
        left, right = st.columns([1, 2], gap="medium")
        with left:
            preview_ui(result.image)
            if result.prediction is not None:
                explanation_ui(settings, result.image, result.prediction, key)
        with right:
            prediction = result.prediction
            if prediction is None:
                problem_ui(result.problem or ApiProblem(f"{result.image.name} was not checked.", "Try again."))
                return
            verdict = verdict_of(prediction, settings.low_confidence)
            if verdict == NOT_A_LEAF:
                not_a_leaf_ui(prediction)
            elif verdict == "uncertain":
                uncertain_ui(prediction)
            else:
                diagnosed_ui(info, prediction)
            feedback_ui(settings, names, result.image, prediction, key)


def explanation_ui(settings: Settings, image: ImageFile, prediction: dict[str, Any], key: str) -> None:
    """A toggle that shows where the model looked: the API's class-activation overlay on the photo as it saw it.
    The overlay is fetched the first time the toggle is turned on (this photo again, with `explain=true`) and kept
    for later reruns, so answers nobody asks to explain cost the server nothing extra."""
    if not st.toggle("Show where the model looked", key=f"{key}-explain"):
        return
    explanation = st.session_state.get(f"{key}-explanation")
    if explanation is None:
        try:
            with st.spinner("Drawing where the model looked…"):
                body = predict(settings.api_url, [image], settings.top_k, settings.timeout_s, explain=True)
        except ApiProblem as problem:
            problem_ui(problem)
            return
        explanation = (body.get("predictions") or [{}])[0].get("explanation") or {}
        st.session_state[f"{key}-explanation"] = explanation
    if not explanation.get("overlay_png"):
        st.caption("This server sent no overlay (it may predate explanations).")
        return
    name = explanation.get("class_name", prediction.get("class_name", "?"))
    st.image(base64.b64decode(explanation["overlay_png"]), width="stretch",
             caption=f"Red: what spoke most for {name.replace('_', ' ')} (centre crop the model saw)")


def diagnosed_ui(info: dict[str, Any], prediction: dict[str, Any]) -> None:
    st.subheader(prediction.get("display_name", prediction.get("class_name", "?")))
    probability = float(prediction.get("probability", 0.0))
    st.progress(min(max(probability, 0.0), 1.0), text=f"Confidence {confidence_text(probability)}")
    top_k_ui(prediction.get("top_k", []))
    disease_ui(info, prediction.get("class_name", ""))


def uncertain_ui(prediction: dict[str, Any]) -> None:
    """No treatment advice on a guess: the two closest conditions, and how to get a clearer answer."""
    st.subheader("Not sure")
    closest = [s.get("display_name", s.get("class_name", "?")) for s in prediction.get("top_k", [])[:2]]
    if len(closest) == 2:
        st.markdown(f"It looks most like **{closest[0]}** or **{closest[1]}**, but the model is not confident. "
                    "Do not treat on this answer alone.")
    reason_ui(prediction)
    st.markdown("**For a clearer answer, take another photo:**\n" + "\n".join(f"- {tip}" for tip in PHOTO_TIPS))
    top_k_ui(prediction.get("top_k", []))


def not_a_leaf_ui(prediction: dict[str, Any]) -> None:
    st.subheader("This doesn't look like a tomato leaf")
    reason_ui(prediction)
    st.markdown("The checker only knows tomato leaves. **For a good photo:**\n"
                + "\n".join(f"- {tip}" for tip in PHOTO_TIPS))


def reason_ui(prediction: dict[str, Any]) -> None:
    words = REASON_WORDS.get(str(prediction.get("verdict_reason") or ""))
    if words:
        st.caption(words)


def preview_ui(image: ImageFile) -> None:
    """Show the photo; browsers can't display TIFF (or every BMP), so those are re-encoded for display only."""
    try:
        if image.mime in BROWSER_IMAGE_TYPES:
            st.image(image.data, caption=image.name, width="stretch")
            return
        with Image.open(io.BytesIO(image.data)) as img:
            img.thumbnail((800, 800))
            st.image(img.convert("RGB"), caption=image.name, width="stretch")
    except (OSError, ValueError, Image.DecompressionBombError):  # not a picture (the API says why), or one the
        st.caption(f"{image.name} (no preview)")  # API read and the preview can't: keep the result either way


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
            tooltip=["condition:N", alt.Tooltip("probability:Q", format=".0%")],
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


def timings_ui(outcome: Outcome | None) -> None:
    """Under Details: where the time went for the last submit, per photo (useful to a developer, noise to a grower)."""
    if outcome is None or not outcome.answered():
        return
    lines = []
    for result in outcome.results:
        timing = (result.prediction or {}).get("timing_ms") or {}
        parts = [f"{name} {timing[name]:.1f} ms" for name in ("decode", "queue", "inference") if name in timing]
        if (result.prediction or {}).get("batch_size"):
            parts.append(f"batch of {result.prediction['batch_size']}")
        if parts:
            lines.append(f"- {result.image.name}: " + " · ".join(parts))
    total = f", whole request {outcome.total_ms:.0f} ms" if outcome.total_ms else ""
    st.markdown(f"**Timing of the last check**{total}\n" + "\n".join(lines))


def feedback_ui(settings: Settings, names: dict[str, str], image: ImageFile, prediction: dict[str, Any],
                key: str) -> None:
    """'This is wrong': the correct class (or "not a tomato leaf") goes to /feedback with the photo, so the next
    model can learn it."""
    status_key = f"feedback-status-{key}"
    with st.expander("This is wrong?", expanded=status_key in st.session_state):
        # the API's own class list: every class it scored, in its order, then "not a tomato leaf"
        classes = list(prediction.get("probabilities") or names)
        if not classes:
            st.caption("Corrections need the API's class list: check the API status under Details.")
            return
        labels = {c: names.get(c) or c.replace("_", " ") for c in classes}
        labels[NOT_A_LEAF] = "This is not a tomato leaf"
        choices = classes + [NOT_A_LEAF]
        predicted = prediction.get("class_name")
        runner_up = next((s["class_name"] for s in prediction.get("top_k", []) if s["class_name"] != predicted), None)
        default = choices.index(runner_up) if runner_up in choices else 0
        with st.form(f"feedback-{key}", border=False):
            correct = st.selectbox("What is it really?", choices, index=default, format_func=labels.get,
                                   key=f"correct-{key}")
            comment = st.text_input("Comment (optional)", key=f"comment-{key}", max_chars=2000)
            sent = st.form_submit_button("Send correction", key=f"send-{key}")
        if sent:
            try:
                reply = send_feedback(settings.api_url, image, correct,
                                      predicted if predicted in classes else None, comment, settings.timeout_s)
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
                "and what growers usually do about it.")


def main() -> None:
    """The page top to bottom: a notice when the checker is down, the last results, the input (upload or sample),
    then the developer details. Containers are laid out first and filled in the order the logic needs."""
    st.set_page_config(page_title="Tomato leaf check", page_icon="🍅", layout="wide")
    header_ui()
    notice_area = st.container()
    results_area = st.container()
    upload_tab, sample_tab, many_tab = st.tabs(["Your photos", "Sample leaves", "Many photos"])
    details = st.expander("Details")
    with details:
        settings, model, problem = details_ui()
    with notice_area:
        service_notice_ui(problem)
    names = display_names(model)
    with upload_tab:
        images = upload_form_ui()
    with sample_tab:
        images = sample_picker_ui(names) or images
    with many_tab:
        many_photos_ui(settings, names)
    if images:
        classify(settings, images, names)
    with results_area:
        results_ui(settings)
    with details:
        timings_ui(st.session_state.get("outcome"))


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
