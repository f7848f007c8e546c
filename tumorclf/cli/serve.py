"""`tumorclf serve`: a local web page: drop a slice, see P(tumour), the decision and the Grad-CAM overlay.

Usage: ``tumorclf serve --model-file PATH [--host 127.0.0.1] [--port 8000] [--max-upload-mb 20]
[--save-uploads DIR] [--threshold T | --operating-point NAME] [--no-gate]``

``--model-file`` is anything ``tumorclf predict --model-file`` accepts; the page answers as predict does
(`tumorclf.serving.web`). The port is taken before the model is loaded and the ``--save-uploads`` folder is
probed, so that a taken port or an unusable folder is a one-line error at once. Ctrl+C stops the server.

The earlier spelling ``--model PATH`` still works, with a notice.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from pathlib import Path

from tumorclf.cli import flags
from tumorclf.errors import UsageError, one_line
from tumorclf.metrics.classification import DEFAULT_THRESHOLD

log = logging.getLogger(__name__)

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")  # addresses only this machine reaches: no warning


def add_arguments(p: argparse.ArgumentParser) -> None:
    flags.add_model_file(p, "what tumorclf predict --model-file accepts: a .keras file (a run's best.keras) or an "
                            "export")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; the page has no log-in)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--max-upload-mb", type=float, default=20, metavar="MB",
                   help="larger uploads get an error (default 20)")
    p.add_argument("--save-uploads", type=Path, metavar="DIR",
                   help="keep each upload in DIR (default: nothing uploaded is written to disk)")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="calibrated P(Tumor) at or above which Tumor is decided, as for predict (default: the "
                        f"model card's, or the run's for a best.keras, else {DEFAULT_THRESHOLD:g})")
    flags.add_operating_point(p, "the page of a run's best.keras or an export")
    p.add_argument("--no-gate", action="store_true",
                   help="no input quality gate: every readable image is decided, as predict --no-gate")


def run(args: argparse.Namespace) -> int:
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise UsageError(f"serve: --threshold must be in [0, 1], got {args.threshold}")
    flags.check_point_or_threshold(args, "serve")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"serve: --port must be in [0, 65535], got {args.port}")
    if not 0 < args.max_upload_mb <= 1024:
        raise UsageError(f"serve: --max-upload-mb must be in (0, 1024], got {args.max_upload_mb:g}")
    if args.save_uploads is not None:
        check_upload_folder(args.save_uploads)
    from tumorclf.serving.web import create_app, require_flask

    require_flask()
    from werkzeug.serving import make_server

    with listen(args.host, args.port) as sock:  # a taken port fails before the model is loaded
        app = create_app(args.model_file, args.threshold, not args.no_gate, args.max_upload_mb, args.save_uploads,
                         args.host, args.operating_point)
        server = make_server(args.host, args.port, app, threaded=True, fd=sock.fileno())
    if args.host not in LOCAL_HOSTS:
        log.warning("listening on %s: the page has no authentication, anyone who can reach this address can "
                    "upload images and read the answers", args.host)
    log.info("serving %s on %s (Ctrl+C stops it)%s", args.model_file, url(args.host, server.port),
             f"; uploads kept in {args.save_uploads}" if args.save_uploads else "")
    log.info("answering requests for the hosts %s", ", ".join(app.config["TUMORCLF_HOSTS"]))
    server.serve_forever()  # returns on Ctrl+C, the socket closed
    log.info("stopped")
    return 0


def check_upload_folder(folder: Path) -> None:
    """Create the ``--save-uploads`` folder and write and remove a small file there as `save_upload` writes
    (atomically), so that an unusable folder is a one-line `UsageError` at start-up, not a 500 later."""
    from tumorclf.utils.files import atomic_write_bytes

    probe = folder / f".tumorclf-serve-probe-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(probe, b"probe")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"serve: cannot use --save-uploads {folder}: {exc.strerror or one_line(exc)}") from None


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line `ServeError` (Werkzeug would print two lines and exit)."""
    from tumorclf.serving.web import ServeError

    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except (OSError, OverflowError) as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}") from None


def url(host: str, port: int) -> str:
    """The page's address as a browser takes it (an IPv6 address in brackets)."""
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
