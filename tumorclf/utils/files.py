"""Atomic writes, CSV text, figures as PNG bytes, and the versions a result depends on."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import sys
import tempfile
from importlib import metadata
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (closed afterwards), ready for an atomic write."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, value: object) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, default=str) + "\n")


def csv_text(header: list[str], rows) -> str:
    """CSV text (properly quoted) from a header and an iterable of rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def versions() -> dict[str, str]:
    """Versions of Python, the platform and the libraries a result depends on."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("tumorclf", "tensorflow", "tensorflow-cpu", "keras", "numpy", "pillow", "scipy", "tf-keras-vis"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return out


def json_safe(value):
    """`value` with NaN and infinities as None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
