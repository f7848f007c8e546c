"""Progress of long steps: a bar on a terminal, periodic log lines otherwise (files, CI, nohup).

Every step that can take more than a few seconds (decoding, feature caching, prediction, a study)
reports through `Progress`, so a 15-minute feature cache is never silent.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

LOG_EVERY_SECONDS = 15.0


class Progress:
    """Counts units of work done out of `total`. On a terminal (stderr is a TTY) it draws a tqdm bar;
    otherwise it logs `desc: done/total (pct), rate, eta` at most every `every` seconds, and once at the end."""

    def __init__(self, total: int, desc: str, unit: str = "it", every: float = LOG_EVERY_SECONDS,
                 bar: bool | None = None):
        self.total, self.desc, self.unit, self.every = int(total), desc, unit, every
        self.done = 0
        self.started = self.last_log = time.monotonic()
        use_bar = sys.stderr.isatty() if bar is None else bar
        self._bar = None
        if use_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif time.monotonic() - self.last_log >= self.every:
            self._log()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        log.info("%s: %d/%d %s in %.1f s", self.desc, self.done, self.total, self.unit,
                 time.monotonic() - self.started)

    def _log(self) -> None:
        self.last_log = time.monotonic()
        elapsed = self.last_log - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        log.info("%s: %d/%d %s (%.0f%%), %.1f %s/s, about %.0f s left", self.desc, self.done, self.total, self.unit,
                 100 * self.done / max(self.total, 1), rate, self.unit, eta)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(items: Iterable[T], total: int, desc: str, unit: str = "it") -> Iterator[T]:
    """Yield `items`, reporting one unit of progress per item."""
    with Progress(total, desc, unit) as progress:
        for item in items:
            yield item
            progress.update()


def keras_progress(total_batches: int, desc: str):
    """A Keras callback reporting `predict` batches (pass it in `callbacks=` of `model.predict`)."""
    import keras

    class PredictProgress(keras.callbacks.Callback):
        def on_predict_begin(self, logs=None):
            self.progress = Progress(total_batches, desc, unit="batches")

        def on_predict_batch_end(self, batch, logs=None):
            self.progress.update()

        def on_predict_end(self, logs=None):
            self.progress.close()

    return PredictProgress()
