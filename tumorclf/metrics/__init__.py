"""Metrics of predictions: classification, calibration and bootstrap intervals.

`DEFAULT_RESAMPLES` lives here, free of numpy and scipy, because command-line help texts state it.
"""

DEFAULT_RESAMPLES = 2000  # bootstrap resamples per interval
