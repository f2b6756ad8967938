"""Image classification data: Fashion-MNIST (the embedded default), CIFAR-10, ImageFolder.

A data set is named by a spec string: ``fashion-mnist`` (the Debian package's files),
``fashion-mnist:DIR`` or ``idx:DIR`` (IDX files), ``cifar10:DIR`` (the python-format folder
``cifar-10-batches-py``), ``imagefolder:DIR`` (ImageNet layout: ``DIR/train/<class>/*`` and
``DIR/val/<class>/*``), or a bare ``DIR`` whose layout says which. The training set is split
into ``train`` and ``val`` by a seeded permutation; search uses ``val``, never ``test``.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from hurricane.errors import UserError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}


class DataError(UserError):
    """A data set that is missing or does not fit the search space."""


class TensorImages:
    """Images held in memory as uint8 (N, C, H, W); batches come out normalised float32."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std) -> None:
        self.images, self.labels = images, labels
        self.stats = (tuple(mean), tuple(std))
        self.mean = torch.tensor(self.stats[0], dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(self.stats[1], dtype=torch.float32).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: torch.Tensor) -> TensorImages:
        return TensorImages(self.images[idx], self.labels[idx], *self.stats)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[idx].float().div_(255)
        return (x - self.mean) / self.std, self.labels[idx]


class FolderImages:
    """Image files decoded on demand, resized (shorter side) and centre-cropped.

    ``image`` is the one place a file becomes a tensor for evaluation; ``batch`` stacks it,
    and ``hurricane.loader`` shares ``open_image`` and ``normalise`` for training batches."""

    def __init__(
        self, files: list[Path], labels: torch.Tensor, resolution: tuple[int, int], channels: int
    ) -> None:
        self.files, self.labels = files, labels
        self.resolution, self.channels = resolution, channels
        self.mean = torch.full((1, channels, 1, 1), 0.45)
        self.std = torch.full((1, channels, 1, 1), 0.225)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: torch.Tensor) -> FolderImages:
        files = [self.files[i] for i in idx.tolist()]
        return FolderImages(files, self.labels[idx], self.resolution, self.channels)

    def open_image(self, i: int) -> PILImage:
        """Image ``i`` decoded to L or RGB; a file PIL cannot read is a one-line DataError
        that names it (a training run stops on it, not on a PIL traceback)."""
        from PIL import Image

        path = self.files[i]
        try:
            with Image.open(path) as src:
                return src.convert("L" if self.channels == 1 else "RGB")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            why = why.replace(f": '{path}'", "").replace(f" '{path}'", "")  # named once is enough
            raise DataError(
                f"{path}: cannot read this image ({why}); replace the file or delete it"
            ) from None

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` as uint8 (C, H, W): shorter side resized to fit, then centre-cropped."""
        from PIL import Image

        h, w = self.resolution
        img = self.open_image(i)
        scale = max(h / img.height, w / img.width)
        size = (max(w, round(img.width * scale)), max(h, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.BILINEAR)
        left, top = (size[0] - w) // 2, (size[1] - h) // 2
        return pil_to_uint8(img.crop((left, top, left + w, top + h)))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (C, H, W) or (N, C, H, W) to float32 with this data's mean and std; the same
        per-element arithmetic for one image or a batch, so both give identical values."""
        mean, std = self.mean.view(-1, 1, 1), self.std.view(-1, 1, 1)
        return (x.float().div_(255) - mean) / std

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack([self.image(i) for i in idx.tolist()])
        return self.normalise(x), self.labels[idx]


def pil_to_uint8(img: PILImage) -> torch.Tensor:
    """A PIL image (L or RGB) as a uint8 (C, H, W) tensor."""
    arr = np.asarray(img, dtype=np.uint8).reshape(img.height, img.width, -1)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


Images = TensorImages | FolderImages


@dataclass
class DataSplits:
    name: str
    source: str
    classes: int
    train: Images
    val: Images
    test: Images

    def describe(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "classes": self.classes,
            "train": len(self.train),
            "val": len(self.val),
            "test": len(self.test),
        }


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2, flip: bool = True) -> torch.Tensor:
    """Random crop after zero padding and random horizontal flip, drawn from ``gen``."""
    n, _, h, w = x.shape
    if pad:
        padded = F.pad(x, (pad, pad, pad, pad))
        offs = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen).tolist()
        x = torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offs)])
    if flip:
        mask = torch.rand(n, generator=gen) < 0.5
        x = torch.where(mask.view(n, 1, 1, 1), x.flip(3), x)
    return x


# --- readers ---------------------------------------------------------------------------------


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(
            f"{path}: not a readable gzip file ({exc}); the file is truncated or corrupt, "
            "reinstall or re-download it"
        ) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != math.prod(dims):
        raise DataError(
            f"{path}: IDX header promises {math.prod(dims)} bytes of data but the file holds "
            f"{len(data) - offset}; the file is truncated or corrupt, reinstall or re-download it"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _load_idx(folder: Path, what: str) -> tuple[TensorImages, TensorImages]:
    files = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            path = _find(folder, f"{prefix}-{kind}")
            if path is None:
                raise DataError(
                    f"{what} not found: {folder}/{prefix}-{kind}.gz is missing; install it with "
                    "'apt-get install dataset-fashion-mnist' or pass --data fashion-mnist:DIR "
                    "pointing at a folder of IDX files"
                )
            files[split, kind] = path
    out = []
    for split in ("train", "test"):
        images = torch.from_numpy(_read_idx(files[split, "images-idx3-ubyte"]).copy())
        labels = torch.from_numpy(_read_idx(files[split, "labels-idx1-ubyte"]).astype(np.int64))
        if len(images) != len(labels):
            raise DataError(
                f"{files[split, 'images-idx3-ubyte']} holds {len(images)} images but "
                f"{files[split, 'labels-idx1-ubyte']} holds {len(labels)} labels; they must match"
            )
        out.append(TensorImages(images.unsqueeze(1), labels, (0.2860,), (0.3530,)))
    return out[0], out[1]


def _load_cifar10(folder: Path) -> tuple[TensorImages, TensorImages]:
    def read(names: list[str]) -> TensorImages:
        xs, ys = [], []
        for name in names:
            path = folder / name
            if not path.is_file():
                raise DataError(
                    f"CIFAR-10 not found: {path} is missing; download the python version "
                    "(cifar-10-python.tar.gz) elsewhere, unpack it and pass --data "
                    "cifar10:PATH/cifar-10-batches-py"
                )
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
        return TensorImages(
            torch.from_numpy(np.concatenate(xs)),
            torch.from_numpy(np.concatenate(ys)),
            (0.4914, 0.4822, 0.4465),
            (0.2470, 0.2435, 0.2616),
        )

    return read([f"data_batch_{i}" for i in range(1, 6)]), read(["test_batch"])


def _scan_folder(root: Path, classes: list[str] | None) -> tuple[list[Path], list[int], list[str]]:
    if classes is None:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files, labels = [], []
    for label, cls in enumerate(classes):
        folder = root / cls
        found = (
            sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if folder.is_dir()
            else []
        )
        files += found
        labels += [label] * len(found)
    return files, labels, classes


def _load_imagefolder(
    folder: Path, resolution: tuple[int, int], channels: int
) -> tuple[FolderImages, FolderImages, int]:
    train_dir, test_dir = folder / "train", folder / "val"
    if not train_dir.is_dir():
        raise DataError(
            f"{folder}: no train/ folder; an ImageFolder data set needs "
            "DIR/train/<class>/<image> (and DIR/val/<class>/<image> for the test split)"
        )
    files, labels, classes = _scan_folder(train_dir, None)
    if not files:
        raise DataError(f"{train_dir}: no images found under its class folders")
    t_files, t_labels, _ = (
        _scan_folder(test_dir, classes) if test_dir.is_dir() else ([], [], classes)
    )
    mk = lambda f, y: FolderImages(f, torch.tensor(y, dtype=torch.long), resolution, channels)  # noqa: E731
    return mk(files, labels), mk(t_files, t_labels), len(classes)


def _resize(images: TensorImages, resolution: tuple[int, int]) -> TensorImages:
    if tuple(images.images.shape[2:]) == tuple(resolution):
        return images
    x = F.interpolate(images.images.float(), size=resolution, mode="bilinear", align_corners=False)
    resized = x.round().clamp_(0, 255).to(torch.uint8)
    return TensorImages(resized, images.labels, *images.stats)


def load_data(
    spec: str,
    resolution: tuple[int, int],
    channels: int,
    classes: int | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    train_limit: int | None = None,
    eval_limit: int | None = None,
) -> DataSplits:
    """Load ``spec`` for a space with this input; the last ``val_fraction`` of a seeded
    permutation of the training set becomes the validation split."""
    kind, _, path = spec.partition(":")
    if Path(spec).expanduser().is_dir():  # a bare folder, even one with ':' in its name
        kind, path = _guess_kind(Path(spec).expanduser()), spec
    elif not path:
        if kind in ("fashion-mnist", "fmnist"):
            path = os.environ.get("HURRICANE_FASHION_MNIST", FASHION_MNIST_DIR)
        elif kind in ("cifar10", "imagefolder", "idx"):
            raise DataError(f"data spec {spec!r} needs a folder: {kind}:PATH")
        else:
            raise DataError(
                f"unknown data set {spec!r}: neither a known name (fashion-mnist, cifar10:PATH, "
                "imagefolder:PATH, idx:PATH) nor an existing folder"
            )
    folder = Path(path).expanduser()
    if not folder.is_dir():
        hint = (
            "install it with 'apt-get install dataset-fashion-mnist'"
            if kind in ("fashion-mnist", "fmnist")
            else "check the path"
        )
        raise DataError(f"data folder {folder} does not exist ({spec!r}); {hint}")

    train: Images
    test: Images
    if kind in ("fashion-mnist", "fmnist", "idx"):
        name = "fashion-mnist" if kind != "idx" else "idx"
        train, test = _load_idx(folder, "Fashion-MNIST" if kind != "idx" else "IDX data")
        n_classes = int(train.labels.max()) + 1
    elif kind == "cifar10":
        name = "cifar10"
        train, test = _load_cifar10(folder)
        n_classes = 10
    elif kind == "imagefolder":
        name = "imagefolder"
        train, test, n_classes = _load_imagefolder(folder, resolution, channels)
    else:
        raise DataError(
            f"unknown data set kind {kind!r} in {spec!r}; use fashion-mnist, cifar10:PATH, "
            "imagefolder:PATH or idx:PATH"
        )

    if isinstance(train, TensorImages) and isinstance(test, TensorImages):  # one loader made both
        have = train.images.shape[1]
        if have != channels:
            raise DataError(
                f"{name} images have {have} channel(s) but the space expects {channels}; "
                "set [input] channels in the space file to match"
            )
        train, test = _resize(train, resolution), _resize(test, resolution)
    if classes is not None and classes != n_classes:
        raise DataError(
            f"{name} has {n_classes} classes but the space expects {classes}; "
            f"set [input] classes = {n_classes} in the space file"
        )
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")

    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(split_seed))
    n_val = max(1, int(round(len(train) * val_fraction)))
    train_idx, val_idx = perm[:-n_val], perm[-n_val:]
    if train_limit:
        train_idx = train_idx[:train_limit]
    if eval_limit:
        val_idx = val_idx[:eval_limit]
    val = train.subset(val_idx)
    train = train.subset(train_idx)
    if eval_limit and len(test) > eval_limit:
        test = test.subset(torch.arange(eval_limit))
    return DataSplits(name, str(folder), n_classes, train, val, test)


def _guess_kind(folder: Path) -> str:
    if (folder / "data_batch_1").is_file():
        return "cifar10"
    if _find(folder, "train-images-idx3-ubyte"):
        return "idx"
    if (folder / "train").is_dir():
        return "imagefolder"
    raise DataError(
        f"{folder}: cannot tell the data set's layout; expected IDX files, a CIFAR-10 "
        "python folder (data_batch_1..5) or an ImageFolder tree (train/<class>/...)"
    )
