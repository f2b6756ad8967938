"""The input pipeline (hurricane.loader) over real JPEG files, with a real DataLoader and real
worker processes: batches do not depend on the worker count, resume where they left off, and a
file that cannot be decoded is one line that names it."""

from __future__ import annotations

import itertools
import math
import multiprocessing
import random
from pathlib import Path

import pytest
import torch

from hurricane.data import DataError, FolderImages, TensorImages, augment, load_data
from hurricane.loader import crop_params, default_workers, iterate
from hurricane.synthetic import write_imagefolder

pytestmark = pytest.mark.usefixtures("single_thread")

RES = (32, 32)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 48 high, 40 wide: neither the resolution nor square, so the crops and resizes all work.
    root = tmp_path_factory.mktemp("imagefolder")
    return write_imagefolder(root, classes=3, per_class=10, size=(48, 40), val_per_class=2)


@pytest.fixture(scope="module")
def images(folder: Path) -> FolderImages:
    data = load_data(f"imagefolder:{folder}", RES, 3, 3, val_fraction=0.2)
    assert isinstance(data.train, FolderImages)
    return data.train


def _plans(n: int, size: int, count: int = 4, batch: int = 6) -> list[tuple[int, torch.Tensor]]:
    gen = torch.Generator().manual_seed(n)
    return [(1000 + 7 * s, torch.randperm(size, generator=gen)[:batch]) for s in range(count)]


def _assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb)
        assert torch.equal(ya, yb)


@pytest.mark.parametrize("train", [True, False])
def test_batches_do_not_depend_on_the_worker_count(images: FolderImages, train: bool) -> None:
    plans = _plans(0, len(images))
    one = list(iterate(images, plans, train=train, workers=0))
    two = list(iterate(images, plans, train=train, workers=2, prefetch=1))
    _assert_same(one, two)
    for (_, idx), (x, y) in zip(plans, one):
        assert x.shape == (len(idx), 3, *RES) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and torch.equal(y, images.labels[idx])


def test_resume_gives_the_tail_of_the_whole_run(images: FolderImages) -> None:
    plans = _plans(1, len(images), count=5)
    whole = list(iterate(images, plans, train=True, workers=2))
    tail = list(iterate(images, plans[3:], train=True, workers=2))
    _assert_same(whole[3:], tail)


def test_the_key_decides_the_augmentation(images: FolderImages) -> None:
    idx = torch.arange(8)
    (a,), (b,), (c,) = (
        [x for x, _ in iterate(images, [(key, idx)], train=True)] for key in (5, 5, 6)
    )
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert sum(not torch.equal(a[i], c[i]) for i in range(len(idx))) >= len(idx) - 1
    # The draw is per (key, image): the image's place in the batch does not matter.
    (d,) = [x for x, _ in iterate(images, [(5, idx.flip(0))], train=True)]
    assert torch.equal(d, a.flip(0))


def test_evaluation_batches_are_folder_batches(images: FolderImages) -> None:
    idx = torch.tensor([3, 0, 7, 7, 11])
    ((x, y),) = iterate(images, [(123, idx)], train=False, workers=0)
    want_x, want_y = images.batch(idx)
    assert torch.equal(x, want_x) and torch.equal(y, want_y)
    # Training crops are something else, but the same pixels normalised the same way.
    ((t, _),) = iterate(images, [(123, idx)], train=True)
    assert not torch.equal(t, x)
    lo = images.normalise(torch.zeros(3, 1, 1, dtype=torch.uint8)).min()
    hi = images.normalise(torch.full((3, 1, 1), 255, dtype=torch.uint8)).max()
    assert lo <= t.min() and t.max() <= hi


def test_in_memory_data_is_batched_as_the_trainer_does() -> None:
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (20, 1, 12, 10), dtype=torch.uint8, generator=gen)
    data = TensorImages(pixels, torch.arange(20) % 4, (0.3,), (0.2,))
    plans = _plans(2, len(data), batch=5)
    for (key, idx), (x, y) in zip(plans, iterate(data, plans, train=True, workers=2)):
        want_x, want_y = data.batch(idx)
        assert torch.equal(x, augment(want_x, torch.Generator().manual_seed(key)))
        assert torch.equal(y, want_y)
    for (_, idx), (x, _) in zip(plans, iterate(data, plans, train=False)):
        assert torch.equal(x, data.batch(idx)[0])


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_file_is_one_line_naming_it(tmp_path: Path, workers: int) -> None:
    write_imagefolder(tmp_path, classes=2, per_class=4, size=(24, 24), val_per_class=1)
    bad = tmp_path / "train" / "class001" / "00002.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg " * 8)
    data = load_data(f"imagefolder:{tmp_path}", (16, 16), 3, 2, val_fraction=0.25)
    assert isinstance(data.train, FolderImages) and isinstance(data.val, FolderImages)
    split = data.train if bad in data.train.files else data.val
    assert bad in split.files
    at = split.files.index(bad)
    plans = [(0, torch.tensor([i])) for i in range(len(split)) if i != at]
    plans.insert(1, (0, torch.tensor([at])))
    before = set(multiprocessing.active_children())
    for train in (True, False):
        with pytest.raises(DataError) as exc:
            list(iterate(split, plans, train=train, workers=workers))
        message = str(exc.value)
        assert str(bad) in message and "replace the file" in message
        assert "\n" not in message and "Traceback" not in message
        # The workers are gone at once, not when a garbage collection finds them.
        assert set(multiprocessing.active_children()) <= before
    with pytest.raises(DataError, match="cannot read this image"):
        split.batch(torch.tensor([at]))


@pytest.mark.parametrize(("resolution", "channels"), [((24, 40), 3), ((40, 24), 1)])
def test_shapes_at_the_space_resolution(
    folder: Path, resolution: tuple[int, int], channels: int
) -> None:
    data = load_data(f"imagefolder:{folder}", resolution, channels, 3)
    for train in (True, False):
        for x, y in iterate(data.test, [(9, torch.arange(4)), (10, torch.arange(2))], train=train):
            assert x.shape == (len(y), channels, *resolution)
            assert x.dtype == torch.float32 and y.dtype == torch.int64


def test_plans_are_read_lazily(images: FolderImages) -> None:
    # An endless stream of plans: only what is consumed (plus the prefetch) is ever drawn.
    drawn = []

    def endless():
        for step in itertools.count():
            drawn.append(step)
            yield step, torch.tensor([step % len(images)])

    before = multiprocessing.active_children()
    batches = iterate(images, endless(), train=True, workers=2, prefetch=1)
    got = list(itertools.islice(batches, 3))
    batches.close()  # type: ignore[attr-defined]
    assert len(got) == 3 and len(drawn) < 10
    assert not [p for p in multiprocessing.active_children() if p not in before]


def test_an_empty_plan_is_an_empty_batch(images: FolderImages) -> None:
    ((x, y),) = iterate(images, [(0, torch.tensor([], dtype=torch.long))], train=True)
    assert x.shape == (0, 3, *RES) and y.shape == (0,)


def test_crop_boxes_follow_random_resized_crop() -> None:
    rng = random.Random(0)
    for width, height in ((40, 48), (200, 30), (30, 200), (7, 7)):
        for _ in range(200):
            top, left, h, w = crop_params(width, height, rng)
            assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
            if (width, height) == (40, 48):  # room for every scale and ratio: no fallback
                assert 0.08 * 0.9 <= h * w / (width * height) <= 1.0
                assert math.log(3 / 4) - 0.15 <= math.log(w / h) <= math.log(4 / 3) + 0.15


def test_default_workers_leave_a_core() -> None:
    assert 0 <= default_workers() <= 8
