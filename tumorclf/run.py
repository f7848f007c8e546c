"""`python -m tumorclf.run ARGS`, the study's own way to train: the same as `tumorclf train ARGS`."""

import sys

from tumorclf.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main(["train", *sys.argv[1:]]))
