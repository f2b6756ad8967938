"""A small, learnable ImageFolder data set written on the spot, for tests, benchmarks and
device checks that need real JPEG files but no downloaded data set."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np


def write_imagefolder(
    root: Path,
    classes: int = 4,
    per_class: int = 16,
    size: tuple[int, int] = (64, 64),
    val_per_class: int = 4,
    seed: int = 0,
    quality: int = 90,
) -> Path:
    """Write ``root/train/<class>/*.jpg`` (``per_class`` each) and ``root/val/<class>/*.jpg``
    (``val_per_class`` each): RGB JPEGs of ``size`` (height, width), seeded, and returns root.

    A class is a hue and a stripe direction and frequency; each image shifts the stripes'
    phase, jitters brightness and adds noise, so a network must learn the pattern, not one
    pixel value. Files already there are overwritten; others are left alone."""
    from PIL import Image

    if classes < 1 or per_class < 1 or val_per_class < 0:
        raise ValueError("write_imagefolder needs classes >= 1, per_class >= 1, val_per_class >= 0")
    h, w = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    root = Path(root)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"class{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.array(colorsys.hsv_to_rgb(c / classes, 0.7, 0.9), dtype=np.float32)
            angle = np.pi * (c % 4) / 4
            period = 6.0 + 4.0 * (c // 4 % 3)
            along = xx * np.cos(angle) + yy * np.sin(angle)
            for i in range(n):
                phase = rng.uniform(0, 2 * np.pi)
                stripes = 0.5 + 0.5 * np.sin(2 * np.pi * along / period + phase)
                light = rng.uniform(0.6, 1.0) * (0.35 + 0.65 * stripes)
                img = light[..., None] * colour * 255 + rng.normal(0, 12, (h, w, 3))
                pixels = np.clip(img, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=quality)
    return root
