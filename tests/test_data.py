"""Data sets (hurricane.data) and evaluation helpers (hurricane.evaluate).

Fashion-MNIST comes from the Debian package's IDX files; CIFAR-10 and ImageFolder data sets
are written, format-correct and small, into tmp_path."""

from __future__ import annotations

import gzip
import pickle
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hurricane.data import (
    FASHION_MNIST_DIR,
    DataError,
    FolderImages,
    TensorImages,
    augment,
    load_data,
)
from hurricane.evaluate import accuracy, recalibrate_bn

pytestmark = pytest.mark.usefixtures("single_thread")

FMNIST = Path(FASHION_MNIST_DIR)


def _rows(images: torch.Tensor | np.ndarray) -> list[bytes]:
    """One bytes key per image, to compare images across splits."""
    arr = images.numpy() if isinstance(images, torch.Tensor) else images
    return [bytes(r) for r in np.ascontiguousarray(arr).reshape(len(arr), -1)]


def _unnormalise(x: torch.Tensor, data: TensorImages | FolderImages) -> torch.Tensor:
    """Back to uint8 pixel values from a normalised batch."""
    return (x * data.std + data.mean).mul(255).round().clamp(0, 255).to(torch.uint8)


def _read_idx_gz(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes())


# --- Fashion-MNIST (the embedded default) ------------------------------------------------------


@pytest.fixture(scope="module")
def fmnist():
    return load_data("fashion-mnist", (28, 28), 1, 10, split_seed=0)


@pytest.fixture(scope="module")
def fmnist_raw():
    images = _read_idx_gz(FMNIST / "train-images-idx3-ubyte.gz")
    labels = _read_idx_gz(FMNIST / "train-labels-idx1-ubyte.gz")
    return images, labels


def test_fashion_mnist_shapes_and_sizes(fmnist) -> None:
    assert fmnist.name == "fashion-mnist"
    assert fmnist.classes == 10
    assert len(fmnist.train) + len(fmnist.val) == 60000
    assert len(fmnist.val) == 6000  # val_fraction 0.1
    assert len(fmnist.test) == 10000
    assert fmnist.describe() == {
        "name": "fashion-mnist",
        "source": str(FMNIST),
        "classes": 10,
        "train": 54000,
        "val": 6000,
        "test": 10000,
    }
    for split in (fmnist.train, fmnist.val, fmnist.test):
        x, y = split.batch(torch.arange(7))
        assert x.shape == (7, 1, 28, 28)
        assert x.dtype == torch.float32
        assert y.shape == (7,)
        assert y.dtype == torch.int64
        assert int(split.labels.min()) == 0
        assert int(split.labels.max()) == 9


def test_fashion_mnist_train_val_partition_the_training_file(fmnist, fmnist_raw) -> None:
    raw_images, raw_labels = fmnist_raw
    raw_keys = _rows(raw_images)
    train_keys = _rows(fmnist.train.images)
    val_keys = _rows(fmnist.val.images)
    # Every training image is used exactly once, in train or in val.
    assert Counter(train_keys) + Counter(val_keys) == Counter(raw_keys)
    assert not set(train_keys) & set(val_keys)
    # Images keep their own labels through the permutation.
    label_of = dict(zip(raw_keys, raw_labels.tolist()))
    assert [label_of[k] for k in val_keys] == fmnist.val.labels.tolist()
    assert [label_of[k] for k in train_keys[:5000]] == fmnist.train.labels[:5000].tolist()
    # The split is a shuffle, not the first/last images of the file.
    assert val_keys[:50] != raw_keys[-50:]
    assert train_keys[:50] != raw_keys[:50]


def test_fashion_mnist_normalised(fmnist) -> None:
    x, _ = fmnist.train.batch(torch.arange(4000))
    assert abs(float(x.mean())) < 0.05
    assert abs(float(x.std()) - 1.0) < 0.05
    # The same statistics hold on held-out images.
    x, _ = fmnist.test.batch(torch.arange(3000))
    assert abs(float(x.mean())) < 0.1
    assert abs(float(x.std()) - 1.0) < 0.1


def test_fashion_mnist_split_seed(fmnist) -> None:
    again = load_data("fashion-mnist", (28, 28), 1, 10, split_seed=0)
    assert torch.equal(again.val.images, fmnist.val.images)
    assert torch.equal(again.val.labels, fmnist.val.labels)
    assert torch.equal(again.train.images[:1000], fmnist.train.images[:1000])
    other = load_data("fashion-mnist", (28, 28), 1, 10, split_seed=1)
    assert len(other.val) == len(fmnist.val)
    assert set(_rows(other.val.images)) != set(_rows(fmnist.val.images))
    # The test split never depends on the seed.
    assert torch.equal(other.test.images, fmnist.test.images)


def test_fashion_mnist_limits(fmnist) -> None:
    small = load_data("fashion-mnist", (28, 28), 1, 10, train_limit=100, eval_limit=50)
    assert (len(small.train), len(small.val), len(small.test)) == (100, 50, 50)
    # Limits shorten the splits without changing which images belong to them.
    assert torch.equal(small.train.images, fmnist.train.images[:100])
    assert torch.equal(small.val.images, fmnist.val.images[:50])
    assert torch.equal(small.test.images, fmnist.test.images[:50])
    x, y = small.val.batch(torch.arange(50))
    assert x.shape == (50, 1, 28, 28)
    assert y.shape == (50,)


def test_fashion_mnist_resized(tmp_path: Path, monkeypatch, fmnist, fmnist_raw) -> None:
    # A copy of the first images in a folder named by HURRICANE_FASHION_MNIST keeps this fast.
    images, labels = fmnist_raw
    test_images = fmnist.test.images[:40, 0].numpy()
    _write_idx(tmp_path / "train-images-idx3-ubyte", images[:200])
    _write_idx(tmp_path / "train-labels-idx1-ubyte", labels[:200])
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", test_images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", fmnist.test.labels[:40].numpy())
    monkeypatch.setenv("HURRICANE_FASHION_MNIST", str(tmp_path))
    big = load_data("fashion-mnist", (32, 32), 1, 10, train_limit=10, eval_limit=10)
    assert big.source == str(tmp_path)
    assert (len(big.train), len(big.val), len(big.test)) == (10, 10, 10)
    assert big.train.batch(torch.arange(10))[0].shape == (10, 1, 32, 32)
    assert big.val.batch(torch.arange(10))[0].shape == (10, 1, 32, 32)
    assert big.test.batch(torch.arange(10))[0].shape == (10, 1, 32, 32)
    # Resizing changes the grid, not the picture: the mean brightness stays close.
    for a, b in zip(big.test.images.float(), test_images[:10]):
        assert abs(float(a.mean()) - float(b.mean())) < 3.0
    rect = load_data("fashion-mnist", (20, 24), 1, 10, train_limit=4, eval_limit=4)
    assert rect.train.batch(torch.arange(4))[0].shape == (4, 1, 20, 24)
    same = load_data("fashion-mnist", (28, 28), 1, 10, eval_limit=40)
    assert np.array_equal(same.test.images[:, 0].numpy(), test_images)


def test_fashion_mnist_missing_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HURRICANE_FASHION_MNIST", str(tmp_path))
    with pytest.raises(DataError) as exc:
        load_data("fashion-mnist", (28, 28), 1, 10)
    msg = str(exc.value)
    assert "\n" not in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert str(tmp_path) in msg

    monkeypatch.setenv("HURRICANE_FASHION_MNIST", str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as exc:
        load_data("fashion-mnist", (28, 28), 1, 10)
    assert "\n" not in str(exc.value)
    assert "apt-get install dataset-fashion-mnist" in str(exc.value)


@pytest.mark.parametrize(
    ("channels", "classes", "words"),
    [(3, 10, ["1 channel", "expects 3", "channels"]), (1, 5, ["10 classes", "classes = 10"])],
)
def test_fashion_mnist_does_not_fit_space(channels: int, classes: int, words) -> None:
    with pytest.raises(DataError) as exc:
        load_data("fashion-mnist", (28, 28), channels, classes)
    msg = str(exc.value)
    assert "\n" not in msg
    for word in words:
        assert word in msg


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("no-such-data-set", ["unknown data set", "no-such-data-set"]),
        ("cifar10", ["needs a folder", "cifar10:PATH"]),
        ("imagefolder", ["needs a folder", "imagefolder:PATH"]),
    ],
)
def test_bad_specs(spec: str, words) -> None:
    with pytest.raises(DataError) as exc:
        load_data(spec, (32, 32), 3)
    for word in words:
        assert word in str(exc.value)
    assert "\n" not in str(exc.value)


def test_unknown_kind_and_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown data set kind 'mnist2'"):
        load_data(f"mnist2:{tmp_path}", (28, 28), 1)
    with pytest.raises(DataError, match="does not exist"):
        load_data(f"cifar10:{tmp_path / 'missing'}", (32, 32), 3)
    with pytest.raises(DataError, match="cannot tell the data set's layout"):
        load_data(str(tmp_path), (32, 32), 3)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5])
def test_bad_val_fraction(tmp_path: Path, fraction: float) -> None:
    _idx_folder(tmp_path, n_train=20, n_test=5)
    with pytest.raises(DataError, match="val_fraction"):
        load_data(f"idx:{tmp_path}", (28, 28), 1, val_fraction=fraction)


# --- IDX files in any folder -------------------------------------------------------------------


def _idx_folder(folder: Path, n_train: int, n_test: int, gz: bool = False, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = {}
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 4).astype(np.uint8)
        _write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        out[prefix] = (images, labels)
    return out


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("how", ["idx", "fashion-mnist", "bare"])
def test_idx_folder(tmp_path: Path, gz: bool, how: str) -> None:
    written = _idx_folder(tmp_path, n_train=40, n_test=12, gz=gz)
    spec = str(tmp_path) if how == "bare" else f"{how}:{tmp_path}"
    data = load_data(spec, (28, 28), 1, 4, val_fraction=0.25)
    assert data.classes == 4  # from the labels
    assert (len(data.train), len(data.val), len(data.test)) == (30, 10, 12)
    x, y = data.test.batch(torch.arange(12))
    assert np.array_equal(_unnormalise(x, data.test)[:, 0].numpy(), written["t10k"][0])
    assert y.tolist() == written["t10k"][1].tolist()
    assert Counter(_rows(data.train.images)) + Counter(_rows(data.val.images)) == Counter(
        _rows(written["train"][0])
    )


def test_truncated_idx_file_is_a_data_error(tmp_path: Path) -> None:
    _idx_folder(tmp_path, n_train=20, n_test=5)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError) as exc:
        load_data(f"idx:{tmp_path}", (28, 28), 1)
    assert "\n" not in str(exc.value)
    assert "train-images-idx3-ubyte" in str(exc.value)


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda b: b[: len(b) // 2], "ended before the end-of-stream marker"),  # cut short
        (lambda b: b"not gzip at all", "Not a gzipped file"),
        (lambda b: b[:12] + bytes(len(b) - 12), "Error -3 while decompressing"),  # zeroed
        (lambda b: b[:-8] + bytes(8), "CRC check failed"),
    ],
)
def test_corrupt_gzip_is_a_data_error(tmp_path: Path, damage, words: str) -> None:
    """Fashion-MNIST's files are .gz: a damaged one is one line naming it, not a zlib or
    EOF traceback."""
    _idx_folder(tmp_path, n_train=20, n_test=5, gz=True)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError) as exc:
        load_data(f"fashion-mnist:{tmp_path}", (28, 28), 1)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: not a readable gzip file"), msg
    assert words in msg and "re-download" in msg and "\n" not in msg


def test_idx_bad_magic(tmp_path: Path) -> None:
    _idx_folder(tmp_path, n_train=20, n_test=5)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(DataError, match="bad magic number"):
        load_data(f"idx:{tmp_path}", (28, 28), 1)


# --- CIFAR-10 python format --------------------------------------------------------------------


def _cifar_folder(folder: Path, per_batch: int = 4, n_test: int = 6) -> dict[str, np.ndarray]:
    """Files laid out like cifar-10-batches-py: pickled dicts with bytes keys, protocol 2."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    written = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        n = n_test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in (np.arange(n) + k) % 10]
        batch = {
            b"batch_label": f"{name} of 5".encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img_{k}_{i}.png".encode() for i in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        written[name] = (data, np.asarray(labels))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": []}, protocol=2))
    return written


@pytest.mark.parametrize("bare", [False, True])
def test_cifar10(tmp_path: Path, bare: bool) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    written = _cifar_folder(folder, per_batch=4, n_test=6)
    spec = str(folder) if bare else f"cifar10:{folder}"
    data = load_data(spec, (32, 32), 3, 10, val_fraction=0.25)
    assert data.name == "cifar10"
    assert data.classes == 10
    assert (len(data.train), len(data.val), len(data.test)) == (15, 5, 6)

    x, y = data.test.batch(torch.arange(6))
    assert x.shape == (6, 3, 32, 32)
    assert x.dtype == torch.float32
    test_data, test_labels = written["test_batch"]
    # Pixels round-trip: rows are 1024 red, then 1024 green, then 1024 blue values.
    assert np.array_equal(_unnormalise(x, data.test).numpy(), test_data.reshape(6, 3, 32, 32))
    assert y.tolist() == test_labels.tolist()
    # Per-channel normalisation: channel means differ, so the channels stay in order.
    assert not torch.equal(data.test.mean[0, 0], data.test.mean[0, 2])

    train_data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = np.concatenate([written[f"data_batch_{i}"][1] for i in range(1, 6)])
    label_of = dict(zip(_rows(train_data), train_labels.tolist()))
    for split in (data.train, data.val):
        xs, ys = split.batch(torch.arange(len(split)))
        assert xs.shape == (len(split), 3, 32, 32)
        keys = _rows(_unnormalise(xs, split).reshape(len(split), -1))
        assert [label_of[k] for k in keys] == ys.tolist()
    assert Counter(_rows(data.train.images)) + Counter(_rows(data.val.images)) == Counter(
        _rows(train_data)
    )


def test_cifar10_resized_and_limited(tmp_path: Path) -> None:
    _cifar_folder(tmp_path, per_batch=4, n_test=6)
    data = load_data(f"cifar10:{tmp_path}", (16, 16), 3, 10, train_limit=3, eval_limit=2)
    assert (len(data.train), len(data.val), len(data.test)) == (3, 2, 2)
    assert data.val.batch(torch.arange(2))[0].shape == (2, 3, 16, 16)


def test_cifar10_does_not_fit_space(tmp_path: Path) -> None:
    _cifar_folder(tmp_path)
    with pytest.raises(DataError, match="3 channel"):
        load_data(f"cifar10:{tmp_path}", (32, 32), 1, 10)
    with pytest.raises(DataError, match="classes"):
        load_data(f"cifar10:{tmp_path}", (32, 32), 3, 100)


def test_cifar10_missing_file(tmp_path: Path) -> None:
    _cifar_folder(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError) as exc:
        load_data(f"cifar10:{tmp_path}", (32, 32), 3, 10)
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(tmp_path / "data_batch_3") in msg
    assert "cifar10:" in msg
    # Without data_batch_1 a bare folder no longer looks like CIFAR-10.
    (tmp_path / "data_batch_1").unlink()
    with pytest.raises(DataError, match="cannot tell"):
        load_data(str(tmp_path), (32, 32), 3, 10)
    (tmp_path / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch|data_batch_1"):
        load_data(f"cifar10:{tmp_path}", (32, 32), 3, 10)


def test_bare_folder_with_colon_in_name(tmp_path: Path) -> None:
    folder = tmp_path / "cifar:v1"
    _cifar_folder(folder)
    data = load_data(str(folder), (32, 32), 3, 10)
    assert data.name == "cifar10"


# --- ImageFolder -------------------------------------------------------------------------------

# Written in this order; labels must follow the sorted order apple, mango, zebra.
COLOURS = {"zebra": (30, 40, 220), "apple": (210, 20, 30), "mango": (40, 200, 60)}
SIZES = [(40, 30), (64, 64), (30, 50)]  # PIL (width, height)


def _imagefolder(root: Path, n_train: int = 3, n_val: int = 2) -> dict[str, int]:
    from PIL import Image

    counts = {}
    for split, n in (("train", n_train), ("val", n_val)):
        for cls, colour in COLOURS.items():
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                size = SIZES[i % len(SIZES)]
                Image.new("RGB", size, colour).save(folder / f"{i}.png")
            (folder / "notes.txt").write_text("not an image")
            counts[split] = counts.get(split, 0) + n
    return counts


def _grey(colour: tuple[int, int, int]) -> int:
    from PIL import Image

    return Image.new("RGB", (1, 1), colour).convert("L").getpixel((0, 0))


@pytest.mark.parametrize("bare", [False, True])
def test_imagefolder_rgb(tmp_path: Path, bare: bool) -> None:
    counts = _imagefolder(tmp_path, n_train=4, n_val=2)
    spec = str(tmp_path) if bare else f"imagefolder:{tmp_path}"
    data = load_data(spec, (32, 32), 3, 3, val_fraction=0.25)
    assert data.name == "imagefolder"
    assert data.classes == 3
    assert isinstance(data.train, FolderImages)
    assert len(data.train) + len(data.val) == counts["train"] == 12
    assert len(data.val) == 3
    assert len(data.test) == counts["val"] == 6  # the test split comes from val/

    order = sorted(COLOURS)
    for split, folder in ((data.train, "train"), (data.val, "train"), (data.test, "val")):
        x, y = split.batch(torch.arange(len(split)))
        assert x.shape == (len(split), 3, 32, 32)
        assert x.dtype == torch.float32
        pixels = _unnormalise(x, split)
        for img, label, path in zip(pixels, y.tolist(), split.files):
            cls = order[label]
            assert path.parent.name == cls
            assert path.parent.parent.name == folder
            # Every pixel of a resized, cropped solid image keeps its class's colour.
            want = torch.tensor(COLOURS[cls], dtype=torch.uint8).view(3, 1, 1)
            assert torch.equal(img, want.expand(3, 32, 32))
    assert sorted(data.test.labels.tolist()) == [0, 0, 1, 1, 2, 2]


def test_imagefolder_grey(tmp_path: Path) -> None:
    _imagefolder(tmp_path, n_train=2, n_val=1)
    data = load_data(f"imagefolder:{tmp_path}", (24, 32), 1, 3, val_fraction=0.5)
    x, y = data.test.batch(torch.arange(3))
    assert x.shape == (3, 1, 24, 32)
    order = sorted(COLOURS)
    for img, label in zip(_unnormalise(x, data.test), y.tolist()):
        assert torch.all(img == _grey(COLOURS[order[label]]))


def test_imagefolder_resize_shorter_side_and_centre_crop(tmp_path: Path) -> None:
    from PIL import Image

    # 64 wide, 32 high: black edge, wide grey middle, white edge.
    arr = np.zeros((32, 64), dtype=np.uint8)
    arr[:, 8:56] = 128
    arr[:, 56:] = 255
    Image.fromarray(arr, mode="L").save(tmp_path / "wide.png")
    images = FolderImages([tmp_path / "wide.png"], torch.tensor([0]), (16, 16), 1)
    x, _ = images.batch(torch.tensor([0]))
    # Shorter side 32 -> 16 gives 32x16; its centre 16 columns are all grey (a crop from
    # either side, or a squeeze of the whole width, would show black or white).
    assert torch.all(_unnormalise(x, images) == 128)
    images = FolderImages([tmp_path / "wide.png"], torch.tensor([0]), (32, 64), 1)
    x, _ = images.batch(torch.tensor([0]))
    assert torch.equal(_unnormalise(x, images)[0, 0], torch.from_numpy(arr))


def test_imagefolder_errors(tmp_path: Path) -> None:
    (tmp_path / "val" / "a").mkdir(parents=True)
    with pytest.raises(DataError) as exc:
        load_data(f"imagefolder:{tmp_path}", (32, 32), 3)
    assert "no train/ folder" in str(exc.value)
    assert "\n" not in str(exc.value)
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        load_data(f"imagefolder:{tmp_path}", (32, 32), 3)


def test_imagefolder_classes_mismatch(tmp_path: Path) -> None:
    _imagefolder(tmp_path, n_train=1, n_val=1)
    with pytest.raises(DataError, match="3 classes but the space expects 10"):
        load_data(f"imagefolder:{tmp_path}", (32, 32), 3, 10)


# --- augmentation ------------------------------------------------------------------------------


@pytest.fixture
def batch() -> torch.Tensor:
    return torch.randn(16, 3, 12, 10, generator=torch.Generator().manual_seed(3))


def test_augment_reproducible(batch: torch.Tensor) -> None:
    a = augment(batch, torch.Generator().manual_seed(7))
    b = augment(batch, torch.Generator().manual_seed(7))
    c = augment(batch, torch.Generator().manual_seed(8))
    assert a.shape == batch.shape
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, batch)


def test_augment_identity_without_pad_or_flip(batch: torch.Tensor) -> None:
    out = augment(batch, torch.Generator().manual_seed(7), pad=0, flip=False)
    assert torch.equal(out, batch)


def test_augment_flip_only(batch: torch.Tensor) -> None:
    out = augment(batch, torch.Generator().manual_seed(7), pad=0, flip=True)
    flipped = [torch.equal(o, x.flip(2)) for o, x in zip(out, batch)]
    kept = [torch.equal(o, x) for o, x in zip(out, batch)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)


def test_augment_crop_only(batch: torch.Tensor) -> None:
    pad = 2
    out = augment(batch, torch.Generator().manual_seed(7), pad=pad, flip=False)
    padded = torch.nn.functional.pad(batch, (pad, pad, pad, pad))
    h, w = batch.shape[2:]
    shifts = set()
    for o, p in zip(out, padded):
        found = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(o, p[:, dy : dy + h, dx : dx + w])
        ]
        assert found, "every output is a crop of the zero-padded input"
        shifts.add(found[0])
    assert len(shifts) > 1


# --- evaluate ----------------------------------------------------------------------------------


class _Constant(nn.Module):
    """Always predicts class 0; records the mode it ran in."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.classes = classes
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        logits = torch.zeros(len(x), self.classes)
        logits[:, 0] = 1.0
        return logits


class _ReadsLabel(nn.Module):
    """Predicts the class written into the image's first pixel (pixel value = 10 * class)."""

    def __init__(self, data: TensorImages, classes: int = 4) -> None:
        super().__init__()
        self.data, self.classes = data, classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixel = _unnormalise(x, self.data)[:, 0, 0, 0].long()
        return nn.functional.one_hot(pixel // 10, self.classes).float()


def _tensor_images(values: list[int], labels: list[int]) -> TensorImages:
    images = torch.tensor(values, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 3, 3)
    return TensorImages(images.clone(), torch.tensor(labels), (0.5,), (0.25,))


def test_accuracy_constant_model() -> None:
    labels = [0, 1, 0, 2, 3, 0, 1]
    data = _tensor_images([0] * len(labels), labels)
    model = _Constant()
    model.train()
    assert accuracy(model, data, batch_size=3) == pytest.approx(3 / 7)
    assert model.modes == [False, False, False]  # eval mode, batches of 3, 3 and 1
    assert model.training  # mode restored
    assert accuracy(model, data.subset(torch.tensor([1, 3, 4])), batch_size=2) == 0.0


def test_accuracy_reads_labels() -> None:
    labels = [0, 1, 2, 3, 3, 2, 1, 0, 2, 1]
    data = _tensor_images([10 * c for c in labels], labels)
    assert accuracy(_ReadsLabel(data), data, batch_size=4) == 1.0
    wrong = _tensor_images([10 * c for c in labels], [(c + 1) % 4 for c in labels[:4]] + labels[4:])
    assert accuracy(_ReadsLabel(wrong), wrong, batch_size=500) == pytest.approx(0.6)


def test_recalibrate_bn_exact_statistics() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 3, 5, 4), dtype=torch.uint8, generator=gen)
    images[:, 1] //= 4  # channels with different statistics
    data = TensorImages(images, torch.zeros(12, dtype=torch.long), (0.4, 0.5, 0.6), (0.2, 0.3, 0.1))
    bn = nn.BatchNorm2d(3)
    bn.running_mean.fill_(100.0)  # stale statistics from somewhere else
    bn.running_var.fill_(100.0)
    model = nn.Sequential(bn).eval()

    # 3 batches of 4 cover all 12 images; further batches are empty and skipped.
    recalibrate_bn(model, data, batches=10, batch_size=4, seed=5)
    x, _ = data.batch(torch.arange(12))
    want_mean = x.mean(dim=(0, 2, 3))
    torch.testing.assert_close(bn.running_mean, want_mean, rtol=0, atol=1e-5)
    assert not model.training  # mode restored
    assert bn.momentum == 0.1  # momentum restored
    assert int(bn.num_batches_tracked) == 3

    # Each batch weighs the same: running_var is the mean of the batches' unbiased variances.
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(5))
    variances = [
        data.batch(perm[b * 4 : (b + 1) * 4])[0].var(dim=(0, 2, 3), correction=1) for b in range(3)
    ]
    torch.testing.assert_close(bn.running_var, torch.stack(variances).mean(0), rtol=1e-5, atol=1e-5)


def test_recalibrate_bn_uses_only_the_requested_batches() -> None:
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (20, 2, 3, 3), dtype=torch.uint8, generator=gen)
    data = TensorImages(images, torch.zeros(20, dtype=torch.long), (0.5, 0.5), (0.25, 0.25))
    bn = nn.BatchNorm2d(2)
    recalibrate_bn(bn, data, batches=2, batch_size=5, seed=3)
    assert int(bn.num_batches_tracked) == 2
    assert bn.training  # it was in training mode before
    first = bn.running_mean.clone()
    # Ten of the twenty images, chosen by the seed: a different seed gives different statistics,
    # the same seed the same ones.
    all_mean = data.batch(torch.arange(20))[0].mean(dim=(0, 2, 3))
    assert not torch.allclose(first, all_mean, atol=1e-4)
    recalibrate_bn(bn, data, batches=2, batch_size=5, seed=3)
    assert torch.equal(bn.running_mean, first)
    recalibrate_bn(bn, data, batches=2, batch_size=5, seed=4)
    assert not torch.allclose(bn.running_mean, first, atol=1e-4)
