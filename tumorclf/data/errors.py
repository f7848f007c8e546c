"""What every decoder shares (`tumorclf.data.decoder` for ordinary images, `tumorclf.data.medical` for DICOM and NIfTI):
the error of a file that cannot be decoded and the pixel limit against decompression bombs."""

MAX_PIXELS = 50_000_000  # larger than any sane slice; guards against decompression bombs


class DecodeError(ValueError):
    """One file cannot be decoded into an image; the message is the reason."""
