"""Shared fixtures: small synthetic datasets on disk, and two logical CPUs for MirroredStrategy."""

from __future__ import annotations

import csv
import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One OpenBLAS thread (numpy, scipy; set before either loads, inherited by the processes a test starts): its
# linear algebra here is small (the gate's 512-feature Ledoit-Wolf covariance and its inverse, fitted at the end
# of every training run), and its threads spin-wait against TensorFlow's pools and the other pytest-xdist
# worker: that fit took 3-13 s in a test's training run instead of 1-2 s.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # as many workers as cores: one TensorFlow thread each (and in the processes a test starts, which inherit
    # these), instead of every worker's thread pools spanning all cores and preempting each other's small ops
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

# Two logical CPU devices, set before TensorFlow initialises, so the mirrored path runs on CPU.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()],
)

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brain_tumor_dataset"
# Modules whose tests train, start processes or export (tens of seconds each) run first: pytest-xdist's work
# stealing (`--dist worksteal`) then ends the session on short tests instead of one worker finishing a long one
# alone while the other idles.
SLOW_FIRST = ("test_reliability.py", "test_fast.py", "test_attention_prior.py", "test_export.py", "test_models.py",
              "test_predict.py", "test_explain.py", "test_gate_serving.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable: each module keeps its order


BLOB_CENTRE = (0.3, 0.3)  # tumour blob centre, as fractions of the image size
BLOB_RADIUS = 0.12


def blob_image(rng: np.random.Generator, size: int, tumor: bool) -> np.ndarray:
    """A 'slice': a disc of random smooth texture; tumour images add a bright blob at BLOB_CENTRE."""
    yy, xx = np.mgrid[:size, :size] / size
    image = np.full((size, size), 60.0)
    for _ in range(6):  # low-frequency structure that differs from image to image
        cy, cx, width, amplitude = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.06, 0.15), rng.uniform(-50, 150)
        image += amplitude * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))
    image += rng.normal(0, 6, image.shape)
    image[(yy - 0.5) ** 2 + (xx - 0.5) ** 2 > rng.uniform(0.40, 0.48) ** 2] = 0
    if tumor:
        image[(yy - BLOB_CENTRE[0]) ** 2 + (xx - BLOB_CENTRE[1]) ** 2 < BLOB_RADIUS**2] = 235
    return np.repeat(image.clip(0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def nifti_bytes(volume: np.ndarray, affine: np.ndarray | None = None, gz: bool = False, image_class=None,
                **header) -> bytes:
    """`volume` as an encoded NIfTI file (RAS affine unless given; gzip-compressed with `gz`)."""
    import gzip

    import nibabel as nib

    image_class = image_class or nib.Nifti1Image
    encoded = image_class(volume, np.eye(4) if affine is None else affine, **header).to_bytes()
    return gzip.compress(encoded) if gz else encoded


def write_blob_dataset(root: Path, per_class: int, size: int = 48, seed: int = 0) -> Path:
    """Class folders `healthy/` and `tumor/` of synthetic blob images as PNG and JPEG."""
    rng = np.random.default_rng(seed)
    for label, folder in enumerate(("healthy", "tumor")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            suffix = ".png" if i % 2 else ".jpg"
            Image.fromarray(blob_image(rng, size, bool(label))).save(root / folder / f"img{i:03d}{suffix}")
    return root


@pytest.fixture
def blob_dataset(tmp_path: Path) -> Path:
    return write_blob_dataset(tmp_path / "data", per_class=40)


@pytest.fixture(scope="session")
def real_data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One decoded-image cache for every test of the real dataset: decoding its 4,600 files takes 10-15 s, and the
    tests that read it only read it (cache hits and misses are tested on blob datasets with their own caches).
    Under pytest-xdist the workers share it, in the run's temporary folder: an entry of the cache appears whole,
    by a rename, so a worker finds it complete or decodes the files itself."""
    return shared_folder(tmp_path_factory, "real_data_cache")


def shared_folder(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder of this test session that every pytest-xdist worker sees (their common temporary folder)."""
    base = tmp_path_factory.getbasetemp()
    path = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
    path.mkdir(exist_ok=True)
    return path


def shared_once(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], object]) -> Path:
    """The session folder `name`, filled by `make(folder)` in whichever pytest-xdist worker asks first (under a
    lock: the others wait, then read it). For module fixtures that build something slow that no test changes,
    so that two workers do not each build it; a `make` that failed is retried from an empty folder."""
    folder = shared_folder(tmp_path_factory, name)
    done = folder.parent / f"{name}.done"
    with open(folder.parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():  # another worker's `shared_folder` may make the folder again between these two
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(exist_ok=True)
            make(folder)
            done.touch()
    return folder


@pytest.fixture
def real_data(isolated_cache: None, real_data_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real dataset not found at {REAL_DATA}")
    monkeypatch.setenv("TUMORCLF_CACHE", str(real_data_cache))
    return REAL_DATA


@pytest.fixture(scope="session")
def machine_limits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """machine.json with this machine's float32 and bfloat16 matmul limits (`utils.machine.peak_gflops`),
    measured once for the session: a training run measures them (about a second each) into its cache folder
    when that folder does not hold them yet, and each test's cache folder is new."""
    from tumorclf.utils.machine import peak_gflops

    def measure(folder: Path) -> None:
        for dtype in ("float32", "bfloat16"):
            peak_gflops(dtype, folder)

    return shared_once(tmp_path_factory, "machine_limits", measure) / "machine.json"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
                   machine_limits: Path) -> None:
    """Each test gets its own decoded-image cache, so no test depends on another's (but for the real dataset's
    shared one, `real_data`; and the machine's measured limits, `machine_limits`); and no ImageNet file of the
    machine (a weights folder in the environment, Keras' download cache) changes what `train --preset auto`
    picks."""
    cache = tmp_path_factory.mktemp("cache")
    shutil.copy(machine_limits, cache / "machine.json")
    monkeypatch.setenv("TUMORCLF_CACHE", str(cache))
    monkeypatch.delenv("TUMORCLF_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("keras_home")))


@pytest.fixture(autouse=True)
def float32_policy() -> None:
    """Training sets Keras' global dtype policy for its whole process (`tumorclf.training.experiment`); each test starts from
    float32, so none depends on the policy an earlier test's training left behind."""
    import keras

    keras.config.set_dtype_policy("float32")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished SimpleCNN run (the study's recipe, 48 px, 5 epochs) on a blob dataset, shared by export, predict
    and explain tests. Trained with --deterministic in float32 with the default strategy, so reruns give the same
    model (`auto` would pick bfloat16 on CPUs that have it); another machine's libraries (a JPEG encoder, oneDNN)
    may give a slightly different one, so tests assert what a model that found the blob does, not exact values.
    3 epochs were not enough to find the blob on every machine. Under pytest-xdist the workers share it: the
    first to arrive trains it under a lock, the others wait and read it (no test changes it)."""
    from tumorclf.cli.main import main

    root = shared_folder(tmp_path_factory, "trained")
    run = root / "runs" / "run"
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (run / "metrics.json").is_file():
            data = write_blob_dataset(root / "data", per_class=60, size=48, seed=1)
            args = ["train", "--data", str(data), "--out", str(root / "runs"), "--name", "run", "--preset", "paper",
                    "--epochs", "5", "--image-size", "48", "--batch-size", "8", "--learning-rate", "0.01",
                    "--cache-dir", str(root / "cache"), "--deterministic", "--precision", "float32",
                    "--strategy", "default"]
            assert main(args) == 0
    return run


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def one_error_line(capsys) -> str:
    """The one `tumorclf: error:` line a command printed to stderr (and nothing else, no traceback)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tumorclf: error:") and "Traceback" not in err[0], err
    return err[0]


def copy_with_operating_point(run: Path, dest: Path, temperature: float | None, threshold: float = 0.5,
                              validation: dict | None = None) -> Path:
    """A copy of `run` at `dest` with an operating_point.json of `temperature` and `threshold` (None: with
    none, as runs before operating points). The shared run is never changed."""
    from tumorclf.metrics.calibration import OperatingPoint
    from tumorclf.runs.folder import RunDir

    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("evaluation*"))  # only this test's evaluations
    copy = RunDir(dest)
    copy.operating_point_file.unlink(missing_ok=True)
    if temperature is not None:
        copy.write_operating_point(OperatingPoint(
            temperature=temperature, threshold=threshold, target_sensitivity=0.95, youden_threshold=threshold,
            fitted_on="validation", n=18, validation=validation or {}))
    return dest

