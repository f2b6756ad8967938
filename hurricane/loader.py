"""Batches for training and evaluation, from a stream of plans ``(key, indices)``.

The trainer decides every batch itself (which images, and an int ``key`` derived from its
seed and step); this module only turns a plan into tensors. In-memory data stays in the
calling process, as fast as before. Image files go through a ``DataLoader`` with worker
processes, and each image's augmentation is drawn from a generator seeded by a hash of
``(key, image index)``: a batch is the same for any number of workers, whichever worker
decodes it, and when a run resumes from any step.

Training transform (ImageNet's): RandomResizedCrop (scale (0.08, 1), ratio (3/4, 4/3)) to the
data's resolution, then a horizontal flip with probability 0.5. The crop's parameters are
drawn here (torchvision's algorithm, but from the seeded ``random.Random``, not torch's
global generator). The crop, resize and flip run through torchvision's functional ops when
torchvision is installed and through PIL otherwise. On a PIL image torchvision's ops *are*
PIL's ``crop``, ``resize`` and ``transpose``, so the two give identical pixels and a run's
batches do not depend on whether torchvision is installed (only the PIL branch runs in this
project's tests; the equality rests on torchvision's PIL kernels, ``_FP.crop``,
``Image.resize`` and ``_FP.hflip``). torchvision's *tensor* kernels (decode_jpeg, antialiased
``interpolate``) are not used: their rounding differs from PIL's by small amounts, and a run's
images would then depend on what is installed.

Evaluation (``train=False``) is ``FolderImages.image``: the shorter side resized, then a
centre crop, by PIL, exactly what ``FolderImages.batch`` gives.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import random
import re
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from hurricane.data import DataError, FolderImages, Images, TensorImages, augment, pil_to_uint8

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)

Plan = tuple[int, torch.Tensor]


def default_workers() -> int:
    """Worker processes for decoding image files: one per core the process may use, less one
    left to the training process (which runs the model and takes the batches), at most 8
    (past that, decoding outruns one accelerator and each worker costs memory). On one core:
    none, since a worker would only time-share that core and add copying."""
    try:
        cores = len(os.sched_getaffinity(0))  # honours taskset / cgroup cpusets
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return min(8, max(0, cores - 1))


def iterate(
    data: Images,
    plans: Iterable[Plan],
    *,
    train: bool,
    workers: int = 0,
    pin_memory: bool = False,
    prefetch: int = 2,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` for each plan ``(key, idx)``, in order: normalised float32 images
    (N, C, H, W) and int64 labels, augmented from ``key`` when ``train``.

    ``plans`` is read lazily (a whole run's plans may be a generator). In-memory data is
    batched in this process (``workers``, ``pin_memory`` and ``prefetch`` do not apply); image
    files are decoded by ``workers`` processes, ``prefetch`` batches ahead each."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if prefetch < 1:
        raise ValueError(f"prefetch must be >= 1, got {prefetch}")
    if isinstance(data, TensorImages):
        return _tensor_batches(data, plans, train)
    if isinstance(data, FolderImages):
        return _folder_batches(data, plans, train, workers, pin_memory, prefetch)
    raise TypeError(f"iterate: expected TensorImages or FolderImages, got {type(data).__name__}")


def _tensor_batches(
    data: TensorImages, plans: Iterable[Plan], train: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """What the trainer computes for in-memory data, bit for bit."""
    for key, idx in plans:
        x, y = data.batch(idx)
        if train:
            x = augment(x, torch.Generator().manual_seed(key))
        yield x, y


# --- image files -----------------------------------------------------------------------------


def image_seed(key: int, index: int) -> int:
    """A 64-bit seed for one image of one plan: a hash, so nearby keys and indices give
    unrelated draws, the same in every process and Python version (no ``hash()`` salt)."""
    digest = hashlib.blake2b(f"{key}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def crop_params(width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a RandomResizedCrop box: torchvision's
    ``RandomResizedCrop.get_params`` (ten tries at a random area and log-uniform aspect
    ratio, then a centre crop clamped to the ratio range), with draws from ``rng``."""
    area = width * height
    log_lo, log_hi = math.log(RATIO[0]), math.log(RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    ratio = width / height
    if ratio < RATIO[0]:
        w, h = width, int(round(width / RATIO[0]))
    elif ratio > RATIO[1]:
        w, h = int(round(height * RATIO[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@functools.cache
def _tv_functional() -> Any:
    """torchvision's functional transforms (v2, else v1), or None where it is not installed
    or does not load against this torch."""
    try:
        from torchvision.transforms import v2

        return v2.functional
    except (ImportError, AttributeError, RuntimeError):
        pass
    try:
        from torchvision.transforms import functional

        return functional
    except (ImportError, AttributeError, RuntimeError):
        return None


def transform_backend() -> str:
    """Which library runs the training crop, resize and flip: "torchvision" or "PIL"."""
    return "torchvision" if _tv_functional() is not None else "PIL"


def train_image(data: FolderImages, key: int, index: int) -> torch.Tensor:
    """Image ``index`` of ``data`` as uint8 (C, H, W), randomly resized-cropped and flipped
    from the seed of ``(key, index)``."""
    from PIL import Image

    rng = random.Random(image_seed(key, index))
    img = data.open_image(index)
    top, left, h, w = crop_params(img.width, img.height, rng)
    flip = rng.random() < 0.5
    size = data.resolution
    tvf = _tv_functional()
    if tvf is not None:
        from torchvision.transforms import InterpolationMode

        img = tvf.resized_crop(img, top, left, h, w, list(size), InterpolationMode.BILINEAR)
        if flip:
            img = tvf.horizontal_flip(img)
    else:
        img = img.crop((left, top, left + w, top + h))
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        if flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return pil_to_uint8(img)


class _Files(Dataset):
    """Map-style data set over image files; an item is a ``(key, image index)`` pair."""

    def __init__(self, data: FolderImages, train: bool) -> None:
        self.data, self.train = data, train

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        key, index = item
        if self.train:
            x = train_image(self.data, key, index)
        else:
            x = self.data.image(index)
        return self.data.normalise(x), int(self.data.labels[index])


class _PlanSampler(Sampler[list[tuple[int, int]]]):
    """Each plan as the list of its ``(key, image index)`` pairs, read lazily."""

    def __init__(self, plans: Iterable[Plan], size: int) -> None:
        self.plans, self.size = plans, size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for key, idx in self.plans:
            if idx.dim() != 1:
                raise ValueError(f"a plan's indices must be 1-D, got shape {tuple(idx.shape)}")
            items = idx.tolist()
            bad = [i for i in items if not -self.size <= i < self.size]
            if bad:
                raise IndexError(f"image index {bad[0]} out of range for {self.size} images")
            yield [(int(key), i % self.size) for i in items]


def _collate(batch: list, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The default collate, and an empty batch for an empty plan (which it cannot stack)."""
    if not batch:
        return torch.empty((0, *shape)), torch.empty(0, dtype=torch.long)
    return default_collate(batch)


def _worker_init(_: int) -> None:
    """One intra-op thread per worker: decoding is per image, and N workers each starting a
    thread per core would over-subscribe the cores the training process needs. (torch's
    worker loop does this today too; said here so it holds whatever a release does.)"""
    torch.set_num_threads(1)


def _one_line(exc: DataError) -> str:
    """The original message of a DataError re-raised from a worker, whose text DataLoader
    has wrapped in a header and the worker's traceback (its last ``...DataError: `` line)."""
    text = str(exc)
    if "\n" not in text:
        return text
    found = re.findall(r"^[\w.]*DataError: (.*)$", text, flags=re.MULTILINE)
    return found[-1] if found else text.strip().splitlines()[0]


def _folder_batches(
    data: FolderImages,
    plans: Iterable[Plan],
    train: bool,
    workers: int,
    pin_memory: bool,
    prefetch: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    loader = DataLoader(
        _Files(data, train),
        batch_sampler=_PlanSampler(plans, len(data)),
        num_workers=workers,
        collate_fn=functools.partial(_collate, shape=(data.channels, *data.resolution)),
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=prefetch if workers else None,
        persistent_workers=False,
        # DataLoader draws its workers' base seed from this; without it, from torch's global
        # generator, which would shift the caller's random stream. The transforms do not use
        # the workers' seeds: every draw comes from (key, image index).
        generator=torch.Generator().manual_seed(0),
    )
    it = iter(loader)
    message = None
    try:
        while True:
            try:
                x, y = next(it)
            except StopIteration:
                return
            except DataError as exc:
                message = _one_line(exc)
                break
            yield x, y
    finally:
        # Stop the workers now, also when the consumer stops early. Dropping the iterator is
        # not enough after a worker's error: DataLoader's re-raise leaves the iterator in a
        # reference cycle, and a garbage-collected one waits 5 s per worker before it kills
        # them. ``_shutdown_workers`` is what the iterator's ``__del__`` calls.
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        del it
    # Raised outside the except block, so the wrapped worker traceback is not chained to it.
    raise DataError(message)
