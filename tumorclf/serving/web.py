"""The web page of `tumorclf serve` (`create_app`): drop a slice, see P(tumour), the decision and the Grad-CAM
overlay.

The model is anything `tumorclf predict` scores. An upload is scored exactly as predict scores the same file:
the same loader (`load_predictor`), operating point (`recorded_operating_point`, `operating_point_for`),
decoder (`read_pixels` then `resize`; of a DICOM/NIfTI volume or multi-frame file the middle slice,
predict's default ``--slices middle``) and scoring (`score_batch`), so the page shows
predict's calibrated P(tumour), decision, quality and OOD score. Grad-CAM needs a Keras model: the
.keras file itself, or the ``model.keras`` an export keeps beside its SavedModel; without one the page says
it is unavailable. An image the quality gate refuses gets its reason, no decision and no heatmap.

Endpoints: ``GET /`` the page (`tumorclf/serving/page`), ``GET /api/model`` the operating point, gate and model card
numbers, ``POST /api/predict`` one file as the raw request body (``Content-Type:
application/octet-stream``, its name URL-encoded in ``X-Filename``). A raw body, not a multipart form:
Werkzeug spools multipart uploads over 500 KB to temporary files, and nothing uploaded touches the disk
unless ``--save-uploads`` asks for it; then only a file that decodes as an image is kept, once scored
(one the gate refuses included; anything else is never written); `tumorclf serve` probes the folder
at start-up.
Errors are JSON ``{"error": one line}``: 400 for a file that is not a readable image or an untrusted
``Host``, 413 over ``--max-upload-mb``, 415 for another content type, 500 when an upload cannot be kept.

Other web sites: the page has no log-in, so it answers only requests addressed to this machine by name
(`host_name` checked before every request: 127.0.0.1, localhost, [::1] and the ``--host`` address, any port; for a
wildcard ``--host`` such as 0.0.0.0 also this machine's name and its addresses). The 415 alone does not keep
them out: a page from another site that rebinds its own name to 127.0.0.1 (DNS rebinding) is same-origin
with itself, so its browser posts raw bytes and reads the answers without asking, but its requests carry
its own name in ``Host`` and get a 400. ``/api/model`` gives the model's file name, not its path, and the
page may not be framed (``frame-ancestors 'none'``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import re
import socket
import threading
import time
from pathlib import Path
from urllib.parse import unquote

import numpy as np

from tumorclf.data.dataset import CLASS_NAMES
from tumorclf.data.decoder import DecodeError, read_pixels, resize
from tumorclf.errors import UserError, one_line
from tumorclf.serving.predictors import MODEL_CARD_FILE, open_model, score_batch

log = logging.getLogger(__name__)

WEB = Path(__file__).parent / "page"  # the page's HTML, script and style
NOTICE = "Research use only — not for diagnosis."
WILDCARD_HOSTS = ("0.0.0.0", "::", "")  # every interface: clients name this machine as they reach it
UPLOAD_TYPE = "application/octet-stream"
DECODE_SLOTS = 2  # uploads decoded at once: one 20 MB file can decode to 150 MB of pixels (decoder.MAX_PIXELS)
CARD_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc", "ece")  # export's evaluation ones
TEST_METRICS = ("accuracy", "precision", "recall", "f1", "auc")


class ServeError(UserError, RuntimeError):
    """The page cannot start: Flask is missing, or the address cannot be listened on."""


def require_flask():
    """The flask module, or a one-line error saying how to install it (it is an optional dependency)."""
    try:
        import flask
    except ImportError:
        raise ServeError('serve needs Flask: pip install -e ".[serve]"') from None
    return flask


class Scorer:
    """The model behind the page, shared by the server's threads: scores an upload as `tumorclf predict`
    scores the same file and explains it with Grad-CAM. Model calls are serialised by one lock (Keras
    models are not safe to call from several threads at once); decoding runs outside it, at most
    `DECODE_SLOTS` at a time."""

    def __init__(self, model_path: Path, threshold: float | None = None, gated: bool = True,
                 point_name: str | None = None):
        self.model_path = Path(model_path)
        model = open_model(self.model_path, threshold, gated, point_name)
        self.point = model.point
        self.predictor, self.size, self.min_side = model.predictor, model.size, model.min_side
        self.temperature, self.threshold, self.source = model.temperature, model.threshold, model.source
        self.explainer, self.gradcam = load_explainer(self.model_path, self.size)
        self.lock = threading.Lock()
        self.decoding = threading.BoundedSemaphore(DECODE_SLOTS)

    def assess(self, data: bytes) -> dict:
        """Scores of one uploaded file (`score_batch`'s), its size, the image as the model saw it and, when
        the model may answer and Grad-CAM is available, the overlay of the predicted class's evidence.
        Raises `DecodeError` for what is not a readable image."""
        with self.decoding:
            pixels = read_pixels(data)
            image = resize(pixels, self.size)
        height, width = pixels.shape[:2]
        del pixels  # full resolution: up to 150 MB, not kept while waiting for the model
        with self.lock:
            score = score_batch(self.predictor, image[None], np.array([min(height, width)]), self.threshold,
                                self.temperature, self.min_side)[0]
            seen, overlay, note = self.explain(image, score)
        return {**score, "width": width, "height": height, "temperature": self.temperature,
                "threshold": self.threshold, "image": png_data_url(seen),
                "image_note": f"as the model saw it, {self.size} px" if self.explainer is not None else
                              f"decoded and resized to {self.size} px (any framing inside the model not shown)",
                "explained": score["predicted"] if overlay is not None else None,
                "overlay": None if overlay is None else png_data_url(overlay), "overlay_note": note}

    def explain(self, image: np.ndarray, score: dict) -> tuple[np.ndarray, np.ndarray | None, str]:
        """(the image as the model frames it, the Grad-CAM overlay of the predicted class or None, a caption):
        the class decided at the threshold, as `tumorclf explain` explains by default; none for an image
        the gate refused."""
        from tumorclf.explain.gradcam import as_seen, heatmaps, overlay_pixels

        seen = image if self.explainer is None else as_seen(self.explainer, image[None])[0]
        if score["quality"] not in (None, "ok"):
            return seen, None, f"cannot assess: {score['quality']}"
        if self.explainer is None:
            return seen, None, f"Grad-CAM unavailable: {self.gradcam}"
        target = CLASS_NAMES.index(score["predicted"])
        cam = heatmaps(self.explainer, image[None].astype("float32"), np.array([target]))[0]
        return seen, overlay_pixels(seen, cam), f"Grad-CAM of the {score['predicted']} class ({self.gradcam})"

    def describe(self) -> dict:
        """What the page states about the model: the operating point and gate applied here, Grad-CAM."""
        return {"model": self.model_path.absolute().name, "size": self.size,
                "operating_point": {"temperature": self.temperature, "threshold": self.threshold,
                                    "source": without_folders(self.source, self.model_path),
                                    "description": self.point and without_folders(self.point, self.model_path)},
                "gate": None if self.min_side is None else {"min_side": self.min_side},
                "gradcam": {"available": self.explainer is not None,
                            "detail": without_folders(self.gradcam, self.model_path)}}


def without_folders(text: str, model_path: Path) -> str:
    """`text` with the model's path cut to its name and the folder it is in cut away: what the page says
    about the model is no map of the server's disk."""
    folder = model_path if model_path.is_dir() else model_path.parent
    for path in dict.fromkeys((model_path.absolute(), model_path)):
        if os.sep in str(path):
            text = text.replace(str(path), model_path.absolute().name)
    for path in dict.fromkeys((folder.absolute(), folder)):
        if os.sep in str(path):
            text = text.replace(f"{path}{os.sep}", "")
    return text


def keras_file(model_path: Path) -> Path | None:
    """The .keras model Grad-CAM can use: the model itself, else the ``model.keras`` an export keeps beside
    its SavedModel (or ONNX file); None when there is none."""
    if model_path.suffix == ".keras":
        return model_path
    beside = (model_path if model_path.is_dir() else model_path.parent) / "model.keras"
    return beside if beside.is_file() else None


def load_explainer(model_path: Path, size: int):
    """(a float32 Keras model reserved for Grad-CAM, which modifies the model it gets, or None; the layer
    explained, or why Grad-CAM is unavailable)."""
    from tumorclf.explain.gradcam import target_layer
    from tumorclf.models.factory import load_model, to_float32

    path = keras_file(model_path)
    if path is None:
        return None, f"no Keras model (model.keras) with {model_path.name}"
    try:
        model = to_float32(load_model(path))
        layer = target_layer(model)
    except (UserError, OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("Grad-CAM unavailable: %s", one_line(exc))
        return None, f"cannot use {path.name} ({one_line(exc)})"
    if int(model.input_shape[1]) != size:
        return None, f"{path.name} takes {model.input_shape[1]} px images, the model {size} px"
    return model, f"{path.name}, layer {layer}"


def png_data_url(pixels: np.ndarray) -> str:
    """uint8 RGB pixels as a PNG data URL: the page shows images that are never written to disk."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# the model card ---------------------------------------------------------------------------------------------
def page_card(model_path: Path, point_name: str | None = None) -> tuple[dict | None, str | None]:
    """(the model card the page shows, where it comes from, without the folder's path):
    ``model_card.json`` beside the model (an export), else the card `tumorclf export` would write
    (`export.model_card`), built from the run folder of a best.keras; (None, None) when neither exists or
    the card cannot be read (logged)."""
    from tumorclf.runs.folder import RunDir

    folder = model_path if model_path.is_dir() else model_path.parent
    try:
        if (folder / MODEL_CARD_FILE).is_file():
            card = json.loads((folder / MODEL_CARD_FILE).read_text())
            return (card, f"{MODEL_CARD_FILE} beside the model") if isinstance(card, dict) else (None, None)
        run = RunDir(folder)
        if model_path == run.best_model and run.finished:
            from tumorclf.serving.export import model_card as run_card

            return run_card(run, point_name=point_name), f"the run folder {folder.absolute().name}"
    except (UserError, OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("no model card numbers on the page: %s", one_line(exc))
    return None, None


def card_numbers(card: dict) -> dict:
    """The card's key numbers for the page: what it states, nothing computed. Each evaluation dataset with
    its metrics and 95% intervals; the run's own test split is labelled leave-source-out when the card says
    the run held sources out."""
    held_out = (card.get("leave_source_out") or {}).get("held_out_sources")
    gate = card.get("quality_gate") or {}
    point = card.get("operating_point") or {}
    return {
        "model": card.get("model"), "weights": card.get("weights_origin"), "split": card.get("split_protocol"),
        "best_epoch": card.get("best_epoch"), "intended_use": card.get("intended_use"),
        "temperature": card.get("temperature"), "threshold": card.get("threshold"),
        "threshold_source": card.get("threshold_source"),
        "target_sensitivity": point.get("target_sensitivity"), "fitted_on": point.get("fitted_on"),
        "fitted_n": point.get("n"),
        "gate": {key: gate.get(key) for key in ("min_side", "ood_threshold", "layer", "validation")} if gate else None,
        "test_metrics": {key: value for key, value in (card.get("test_metrics") or {}).items()
                         if key in TEST_METRICS and isinstance(value, (int, float))},
        "evaluations": [{"name": f"{name} / {dataset}", "n": values.get("n"),
                         "kind": ("leave-source-out: held-out sources " + ", ".join(held_out)
                                  if held_out and dataset == "test" else
                                  f"in-source ({card.get('split_protocol')} split)" if dataset == "test"
                                  else "other data"),
                         "metrics": {metric: values.get(metric) for metric in CARD_METRICS
                                     if isinstance(values.get(metric), dict)}}
                        for name, evaluation in (card.get("evaluations") or {}).items()
                        for dataset, values in (evaluation.get("datasets") or {}).items()],
    }


# the web application ----------------------------------------------------------------------------------------
def create_app(model_path: str | Path, threshold: float | None = None, gated: bool = True,
               max_upload_mb: float = 20, save_uploads: Path | None = None, host: str = "127.0.0.1",
               point_name: str | None = None):
    """The Flask application of the page, with its model loaded (a `ModelError` when it cannot be). `host`
    is the address the server listens on: requests whose ``Host`` names neither it nor loopback get a 400."""
    require_flask()
    from flask import Flask, jsonify, request, send_from_directory
    from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

    scorer = Scorer(Path(model_path), threshold, gated, point_name)
    card, card_source = page_card(scorer.model_path, point_name)
    about = {**scorer.describe(), "notice": NOTICE, "max_upload_mb": max_upload_mb,
             "card": card_numbers(card) if card else None, "card_source": card_source,
             "saves_uploads": save_uploads is not None}
    app = Flask(__name__, static_folder=str(WEB), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 1024 * 1024)
    # Checked here, not with Flask's TRUSTED_HOSTS: Werkzeug 3.1.9 cuts a trusted name at its first colon,
    # so "[::1]" there matches nothing and every IPv6 loopback request would be refused.
    app.config["TUMORCLF_HOSTS"] = trusted = trusted_hosts(host)

    def error(status: int, message: str):
        return jsonify({"error": " ".join(message.split())}), status

    @app.get("/")
    def index():
        return send_from_directory(WEB, "index.html")

    @app.get("/api/model")
    def describe():
        return jsonify(about)

    @app.post("/api/predict")
    def predict():
        name = upload_name(request.headers.get("X-Filename", ""))
        if request.mimetype != UPLOAD_TYPE:
            return error(415, f"send the file's bytes as the request body with Content-Type: {UPLOAD_TYPE}")
        data = request.get_data(cache=False)
        if not data:
            return error(400, f"{name}: empty upload")
        start = time.perf_counter()
        try:
            result = scorer.assess(data)
        except DecodeError as exc:
            log.warning("refused %s (%d bytes): %s", name, len(data), exc)
            return error(400, f"{name}: {exc}")
        log.info("upload %s: P(tumour) %.4f, %s, quality %s (%.2f s)", name, result["prob_tumor"],
                 result["predicted"] or "no decision", result["quality"] or "not gated", time.perf_counter() - start)
        saved = None
        if save_uploads is not None:  # only what decoded: what the page answered about can be scored again
            try:
                saved = save_upload(save_uploads, name, data)
            except OSError as exc:
                log.error("cannot keep upload %s in --save-uploads %s: %s", name, save_uploads, one_line(exc))
                return error(500, f"{name}: cannot keep the upload on the server (--save-uploads): "
                                  f"{exc.strerror or type(exc).__name__}")
        return jsonify({"file": name, "bytes": len(data), **result, "saved_as": saved.name if saved else None})

    @app.before_request
    def untrusted_host():
        if host_name(request.headers.get("Host", "")) in trusted:
            return None
        log.warning("refused a request for Host %r (not this machine's name: another site's page?)",
                    request.headers.get("Host", "")[:100])
        return error(400, f"untrusted Host header: the page answers only as {', '.join(trusted)} "
                          "(serve --host adds its address)")

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc):
        return error(413, f"file too large: the limit is {max_upload_mb:g} MB (--max-upload-mb)")

    @app.errorhandler(HTTPException)
    def http_error(exc):
        return error(exc.code or 500, f"{exc.name}: {exc.description}")

    @app.errorhandler(Exception)
    def unexpected(exc):
        log.exception("request %s %s failed", request.method, request.path)
        return error(500, f"internal error: {type(exc).__name__}: {exc}")

    @app.after_request
    def locked_down(response):
        # the page shows file names users chose: no script, style or image from anywhere but itself
        # and no other site may frame it
        response.headers["Content-Security-Policy"] = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    return app


def host_name(header: str) -> str | None:
    """The name of a ``Host`` header without its port, lower-case (IPv6 in brackets), or None when the header
    is not a host name, an IPv4 address or a bracketed IPv6 address with an optional port 1-65535."""
    match = HOST_HEADER.fullmatch(header.strip().lower())
    if match is None or (match.group(2) is not None and not 1 <= int(match.group(2)) <= 65535):
        return None
    return match.group(1)


HOST_HEADER = re.compile(r"([a-z0-9.-]+|\[[0-9a-f:.]+\])(?::([0-9]{1,5}))?")


def trusted_hosts(host: str) -> list[str]:
    """The names a request's ``Host`` may give (`host_name`, the port ignored): loopback's,
    the address listened on, and for a wildcard address this machine's name and addresses. IPv6 addresses
    in brackets, as in a Host header."""
    names = ["127.0.0.1", "localhost", "[::1]"]
    for name in machine_names() if host in WILDCARD_HOSTS else [host]:
        name = f"[{name}]" if ":" in name else name.lower()
        if name not in names:
            names.append(name)
    return names


def machine_names() -> list[str]:
    """This machine's host name and the addresses it resolves to (none when it does not resolve)."""
    name = socket.gethostname()
    try:
        addresses = [info[4][0] for info in socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)]
    except OSError:
        addresses = []
    return [name, *dict.fromkeys(address.partition("%")[0] for address in addresses)]


def upload_name(header: str) -> str:
    """The uploaded file's name from the URL-encoded ``X-Filename`` header, for messages and logs only."""
    name = Path(unquote(header).replace("\\", "/")).name.strip()
    return " ".join(name.split())[:200] or "upload"


def save_upload(folder: Path, name: str, data: bytes) -> Path:
    """Keep an upload when ``--save-uploads`` asks: ``DATE-TIME_SHA256[:12]_NAME`` in `folder` (a saved
    file scored again with `tumorclf predict` gives what the page showed). An `OSError` when it cannot."""
    from werkzeug.utils import secure_filename

    from tumorclf.utils.files import atomic_write_bytes

    path = folder / (f"{time.strftime('%Y%m%d-%H%M%S')}_{hashlib.sha256(data).hexdigest()[:12]}_"
                     f"{secure_filename(name) or 'upload'}")
    atomic_write_bytes(path, data)
    return path
