"""`tumorclf serve`: the page's answer equals `tumorclf predict` on the same file, bad uploads get a one-line
JSON error, concurrent requests all answer alike, nothing uploaded touches the disk unless asked (and then
only images), and requests for another site's host name (DNS rebinding) are refused."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import quote
from urllib.request import Request, urlopen

import numpy as np
import pytest
import werkzeug.formparser
import werkzeug.serving
from conftest import blob_image, one_error_line
from PIL import Image

import tumorclf.utils.files
from tumorclf.cli.main import main
from tumorclf.gate.quality_gate import GATE_JSON
from tumorclf.runs.folder import RunDir
from tumorclf.serving.web import (
    NOTICE,
    UPLOAD_TYPE,
    create_app,
    host_name,
    trusted_hosts,
)

SCORES = ("prob_tumor", "prob_tumor_raw", "predicted", "quality", "ood_score")


@pytest.fixture(scope="module")
def app(trained_run: Path):
    return create_app(trained_run / "best.keras")


def encoded(pixels: np.ndarray, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format)
    return buffer.getvalue()


def slice_bytes(seed: int, size: int = 64, tumor: bool = True, format: str = "PNG") -> bytes:
    return encoded(blob_image(np.random.default_rng(seed), size, tumor), format)


def post(app, data: bytes, name: str = "slice.png", content_type: str = UPLOAD_TYPE):
    """One upload as the page sends it, with a client of its own (test clients are not shared by threads)."""
    return app.test_client().post("/api/predict", data=data,
                                  headers={"Content-Type": content_type, "X-Filename": quote(name)})


def test_the_answer_equals_tumorclf_predict_on_the_same_file(app, trained_run: Path, tmp_path: Path):
    """Scores of a tumour PNG, a healthy JPEG, a tiny slice (too_small) and a blank one (blank) equal predict's,
    with an overlay of the predicted class only where the gate lets the model answer."""
    files = {"tumor.png": slice_bytes(1), "healthy.jpg": slice_bytes(2, tumor=False, format="JPEG"),
             "tiny.png": slice_bytes(3, size=16), "blank.png": encoded(np.full((64, 64, 3), 2, np.uint8))}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    out = tmp_path / "preds"
    assert main(["predict", "--model-file", str(trained_run / "best.keras"), "--inputs",
                 *(str(tmp_path / n) for n in files), "--out", str(out), "--format", "json"]) == 0
    expected = {Path(row["path"]).name: row for row in json.loads((out / "predictions.json").read_text())}
    qualities = set()
    for name, data in files.items():
        response = post(app, data, name)
        assert response.status_code == 200, response.get_json()
        answer = response.get_json()
        # equal, but for the last printed digit: the page scores one image, predict a batch, and a batch's
        # arithmetic may round differently
        assert {key: answer[key] for key in SCORES} == pytest.approx(
            {key: expected[name][key] for key in SCORES}, abs=2e-6), name
        assert answer["file"] == name and answer["image"].startswith("data:image/png;base64,")
        if answer["quality"] == "ok":
            assert answer["explained"] == answer["predicted"] and answer["overlay"].startswith("data:image/png")
        else:
            assert answer["overlay"] is None and answer["overlay_note"] == f"cannot assess: {answer['quality']}"
        qualities.add(answer["quality"])
    assert {"ok", "too_small", "blank"} <= qualities


def test_a_text_file_is_refused_with_one_line(app):
    response = post(app, b"patient notes\nnot an image\n", "notes.txt")
    assert response.status_code == 400
    message = response.get_json()["error"]
    assert message == "notes.txt: not an image (unrecognised content)"
    assert post(app, b"", "empty.png").status_code == 400
    wrong = post(app, slice_bytes(1), content_type="multipart/form-data; boundary=x")
    assert wrong.status_code == 415 and "\n" not in wrong.get_json()["error"]


@pytest.fixture(scope="module")
def keeping(trained_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """(an app with a 0.01 MB limit that keeps uploads, the folder it keeps them in)."""
    kept = tmp_path_factory.mktemp("serve") / "kept"
    return create_app(trained_run / "best.keras", max_upload_mb=0.01, save_uploads=kept), kept


def test_an_upload_over_the_limit_is_413_and_only_images_are_kept_when_asked(keeping):
    small, kept = keeping
    response = post(small, b"\0" * 20_000, "big.png")
    assert response.status_code == 413
    assert response.get_json() == {"error": "file too large: the limit is 0.01 MB (--max-upload-mb)"}
    assert post(small, b"patient notes\n", "notes.txt").status_code == 400
    data = slice_bytes(4)
    answer = post(small, data, "../a b.png").get_json()
    saved = kept / answer["saved_as"]  # the name only: the server's folders are not the uploader's business
    assert saved.name.endswith("_a_b.png") and saved.read_bytes() == data
    assert [p.name for p in kept.iterdir()] == [saved.name]  # neither the 413 upload nor the text file was kept


def test_an_upload_that_cannot_be_kept_is_a_500_logged_in_one_line(keeping, caplog):
    small, kept = keeping
    with caplog.at_level(logging.INFO, logger="tumorclf.serving.web"):
        os.rename(kept, kept.with_name("moved"))
        kept.write_text("")  # a file where the folder was: the save fails
        try:
            response = post(small, slice_bytes(5), "slice.png")
        finally:
            kept.unlink()
            os.rename(kept.with_name("moved"), kept)
    assert response.status_code == 500
    message = response.get_json()["error"]
    assert message.startswith("slice.png: cannot keep the upload on the server (--save-uploads): ")
    assert "\n" not in message and str(kept) not in message
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None and "\n" not in errors[0].getMessage()
    assert f"cannot keep upload slice.png in --save-uploads {kept}" in errors[0].getMessage()


def test_concurrent_requests_all_answer_and_agree(app):
    uploads = [("a.png", slice_bytes(5)), ("b.jpg", slice_bytes(6, tumor=False, format="JPEG")),
               ("c.txt", b"not an image")] * 4
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda upload: post(app, upload[1], upload[0]), uploads))
    answers: dict[str, set] = {}
    for (name, _), response in zip(uploads, responses):
        assert response.status_code == (400 if name.endswith(".txt") else 200)
        body = response.get_json()
        answers.setdefault(name, set()).add(json.dumps(body, sort_keys=True))
    assert all(len(distinct) == 1 for distinct in answers.values()), answers


def test_nothing_uploaded_is_written_to_disk(app, tmp_path: Path, monkeypatch):
    """An upload over Werkzeug's 500 KB spooling size leaves the working folder and the temporary folder
    empty, and no temporary file is even opened."""
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))

    def refuse(*args, **kwargs):
        raise AssertionError("an upload reached a temporary file")

    for name in ("mkstemp", "mkdtemp", "NamedTemporaryFile", "TemporaryFile", "SpooledTemporaryFile"):
        monkeypatch.setattr(tempfile, name, refuse)
    monkeypatch.setattr(werkzeug.formparser, "SpooledTemporaryFile", refuse)
    noise = np.random.default_rng(7).integers(0, 256, (640, 640), dtype=np.uint8)
    data = encoded(np.repeat(noise[..., None], 3, axis=-1))
    assert len(data) > 500 * 1024
    response = post(app, data, "noise.png")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["saved_as"] is None
    assert list(cwd.iterdir()) == [] and list(tmp.iterdir()) == []


def test_the_model_numbers_come_from_the_run(app, trained_run: Path):
    about = app.test_client().get("/api/model").get_json()
    run = RunDir(trained_run)
    assert about["operating_point"]["temperature"] == run.temperature()
    assert about["operating_point"]["threshold"] == run.threshold()
    assert about["gate"]["min_side"] == json.loads((trained_run / GATE_JSON).read_text())["min_side"]
    card = about["card"]
    assert card["model"] == "simplecnn" and card["best_epoch"] == run.metrics()["best_epoch"]
    assert card["test_metrics"]["accuracy"] == run.metrics()["accuracy"]
    assert (card["temperature"], card["threshold"]) == (run.temperature(), run.threshold())
    assert card["evaluations"] == []  # the run has no evaluation folder: nothing invented
    assert about["gradcam"] == {"available": True, "detail": "best.keras, layer relu3"}
    assert about["notice"] == NOTICE and about["max_upload_mb"] == 20
    # no path of the server's disk: names only
    assert about["model"] == "best.keras" and str(trained_run) not in json.dumps(about)
    assert about["operating_point"]["source"] == "operating_point.json"
    assert about["card_source"] == f"the run folder {trained_run.name}"


def test_requests_for_another_host_name_are_refused(app):
    """DNS rebinding: another site's page whose name now resolves to 127.0.0.1 sends its own name as Host."""
    client = app.test_client()
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil.example:80"):
        for response in (client.get("/", headers={"Host": host}), client.get("/api/model", headers={"Host": host}),
                         client.get("/static/app.js", headers={"Host": host}),
                         client.post("/api/predict", data=slice_bytes(1),
                                     headers={"Host": host, "Content-Type": UPLOAD_TYPE})):
            assert response.status_code == 400, (host, response.request.path)
            message = response.get_json()["error"]
            assert message.startswith("untrusted Host header: the page answers only as 127.0.0.1, localhost, [::1]")
            assert "\n" not in message
    for host in ("127.0.0.1:8123", "127.0.0.1", "localhost", "localhost:8000", "[::1]:8000"):
        assert client.get("/api/model", headers={"Host": host}).status_code == 200, host
    response = client.post("/api/predict", data=slice_bytes(1), headers={"Host": "127.0.0.1:8123",
                                                                         "Content-Type": UPLOAD_TYPE})
    assert response.status_code == 200, response.get_json()


def test_the_trusted_host_names_add_the_address_listened_on():
    loopback = ["127.0.0.1", "localhost", "[::1]"]
    assert trusted_hosts("127.0.0.1") == trusted_hosts("localhost") == trusted_hosts("::1") == loopback
    assert trusted_hosts("192.168.1.5") == [*loopback, "192.168.1.5"]
    assert trusted_hosts("fd00::5") == [*loopback, "[fd00::5]"]
    assert trusted_hosts("Lab-PC.local") == [*loopback, "lab-pc.local"]
    everywhere = trusted_hosts("0.0.0.0")
    assert everywhere[:3] == loopback and socket.gethostname().lower() in everywhere
    assert "0.0.0.0" not in everywhere and "evil.example" not in everywhere


def test_the_page_carries_the_research_only_notice(app):
    client = app.test_client()
    page = client.get("/")
    assert page.status_code == 200 and NOTICE.encode() in page.data
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200


def test_the_command_serves_on_a_free_port_and_warns_off_loopback(trained_run: Path, tmp_path: Path, monkeypatch,
                                                                   caplog):
    """`tumorclf serve --port 0` answers on the port it logs, for its own address and loopback's names but not
    for another site's; a host other than localhost is warned about; the --save-uploads probe leaves nothing."""
    hosts = (None, "127.0.0.1:{port}", "localhost", "evil.example")  # None: urllib's own, 127.0.0.2:PORT
    answers: dict = {}

    def ask(port: int, host: str | None) -> None:
        headers = {"Host": host.format(port=port)} if host else {}
        request = Request(f"http://127.0.0.2:{port}/api/model", headers=headers)
        try:
            with urlopen(request, timeout=30) as response:
                answers[host] = (response.status, json.loads(response.read()))
        except HTTPError as exc:
            answers[host] = (exc.code, json.loads(exc.read()))

    def some_requests(server, poll_interval: float = 0.5) -> None:
        server.timeout = 30  # handle_request gives up when no client connects
        try:
            for host in hosts:
                client = threading.Thread(target=ask, args=(server.port, host))
                client.start()
                server.handle_request()
                client.join(timeout=60)
        finally:
            server.server_close()

    monkeypatch.setattr(werkzeug.serving.BaseWSGIServer, "serve_forever", some_requests)
    kept = tmp_path / "kept"
    with caplog.at_level(logging.INFO, logger="tumorclf"):
        assert main(["serve", "--model-file", str(trained_run / "best.keras"), "--host", "127.0.0.2", "--port", "0",
                     "--save-uploads", str(kept)]) == 0
    assert set(answers) == set(hosts), answers
    for host in hosts[:3]:
        status, about = answers[host]
        assert status == 200 and about["model"] == "best.keras" and about["saves_uploads"] is True, host
    status, refused = answers["evil.example"]
    assert status == 400 and refused["error"].startswith("untrusted Host header")
    assert "no authentication" in caplog.text and "http://127.0.0.2:" in caplog.text
    assert "answering requests for the hosts 127.0.0.1, localhost, [::1], 127.0.0.2" in caplog.text
    assert kept.is_dir() and list(kept.iterdir()) == []


def test_bad_command_lines_end_in_one_line(trained_run: Path, tmp_path: Path, capsys):
    model = str(trained_run / "best.keras")
    assert main(["serve", "--model-file", str(tmp_path / "missing.keras"), "--port", "0"]) == 2
    assert "not found" in one_error_line(capsys)
    assert main(["serve", "--port", "0"]) == 2
    assert "--model-file is required" in one_error_line(capsys)
    assert main(["serve", "--model-file", model, "--threshold", "1.5"]) == 2
    assert "--threshold must be in [0, 1]" in one_error_line(capsys)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model-file", model, "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in one_error_line(capsys)
    (tmp_path / "file").write_text("")
    assert main(["serve", "--model-file", model, "--save-uploads", str(tmp_path / "file" / "uploads")]) == 2
    assert "cannot use --save-uploads" in one_error_line(capsys)
    assert not os.path.exists(tmp_path / "file" / "uploads")


def test_the_earlier_model_flag_still_serves_with_a_notice(trained_run: Path, monkeypatch, capsys):
    """`serve --model PATH` (before --model-file) serves that model, with a `tumorclf: deprecated:` line."""
    loaded, served = [], []
    monkeypatch.setattr("tumorclf.serving.web.create_app", lambda model, *args: loaded.append(model)
                        or create_app(model, *args))
    monkeypatch.setattr(werkzeug.serving.BaseWSGIServer, "serve_forever",
                        lambda server, poll_interval=0.5: served.append(server.port) or server.server_close())
    assert main(["serve", "--model", str(trained_run / "best.keras"), "--port", "0"]) == 0
    assert loaded == [trained_run / "best.keras"] and len(served) == 1 and served[0] > 0
    assert "tumorclf: deprecated: --model will be removed; use --model-file" in capsys.readouterr().err


def test_an_unwritable_upload_folder_fails_at_start_up(trained_run: Path, tmp_path: Path, monkeypatch, capsys):
    """The --save-uploads folder exists but cannot be written (as root, chmod would not stop the write)."""
    def refuse(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(tumorclf.utils.files, "atomic_write_bytes", refuse)
    loaded = []
    monkeypatch.setattr("tumorclf.serving.web.create_app", lambda *args: loaded.append(args))
    kept = tmp_path / "kept"
    assert main(["serve", "--model-file", str(trained_run / "best.keras"), "--port", "0", "--save-uploads",
                 str(kept)]) == 2
    assert one_error_line(capsys).endswith(f"serve: cannot use --save-uploads {kept}: Permission denied")
    assert loaded == [] and list(kept.iterdir()) == []  # refused before the model was loaded


@pytest.mark.parametrize("header, name", [
    ("127.0.0.1", "127.0.0.1"), ("LocalHost:8000", "localhost"), ("[::1]:8000", "[::1]"), ("[::1]", "[::1]"),
    ("[fd00::5]:80", "[fd00::5]"), ("evil.example:8000", "evil.example"),
    ("", None), ("127.0.0.1:0", None), ("127.0.0.1:70000", None), ("::1", None), ("a b", None),
    ("host:port", None), ("[::1]x", None)])
def test_the_host_header_is_parsed_without_werkzeug(header, name):
    """Werkzeug 3.1.9's own check cannot match a bracketed IPv6 name; ours must, whatever Werkzeug does."""
    assert host_name(header) == name
