"""Write the quality gate's probe images (docs/quality-gate.md): inputs a brain-MRI
classifier should refuse to score, each kind in its own folder, generated deterministically.

    python experiments/gate_probes.py --data ../shared/data/brain_tumor_dataset --out /tmp/gate_probes
    tumorclf predict --model-file RUN/best.keras --inputs /tmp/gate_probes --out probes/   # probes/predictions.csv

- blank/    98 slices of pixel values 0-2 (as the damaged copy of a public set in the issue)
- constant/ 16 flat gray images, 0 to 240
- noise/    20 gray uniform-noise images
- colour/   20 smooth colour images with texture (a stand-in for photos)
- tiny/     20 dataset slices shrunk to 64 px (under half the model's 224)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def write(folder: Path, images) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, pixels in enumerate(images):
        Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(folder / f"{folder.name}_{i:03d}.png")


def colour_image(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] / size
    phases = rng.uniform(0, 2 * np.pi, 3)
    rgb = np.stack([127 + 120 * np.sin(4 * xx + 3 * yy + p) for p in phases], axis=-1)
    return (rgb + rng.normal(0, 12, rgb.shape)).clip(0, 255)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the dataset, for the tiny slices")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rng = np.random.default_rng(18)
    write(args.out / "blank", (rng.integers(0, 3, (224, 224)) for _ in range(98)))
    write(args.out / "constant", (np.full((224, 224), v) for v in range(0, 241, 16)))
    write(args.out / "noise", (rng.integers(0, 256, (224, 224)) for _ in range(20)))
    write(args.out / "colour", (colour_image(rng) for _ in range(20)))
    files = sorted(p for p in args.data.rglob("*.jpg"))
    picks = rng.choice(len(files), 20, replace=False)
    write(args.out / "tiny", (np.asarray(Image.open(files[i]).convert("L").resize((64, 64))) for i in picks))


if __name__ == "__main__":
    main()
