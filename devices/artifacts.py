"""Converted artifacts on disk, named by the content hash of what they were made from, and the
one conversion pool every caller (the campaign, whole models) converts through.

A block converted for one device is not converted again for another device with the same
runtime and precision; a killed conversion leaves nothing half-written that a later run
would trust.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from devices.convert import (
    CONVERT_LOCK,
    CONVERTER_VERSION,
    INT8_CALIBRATION,
    ConversionError,
    quiet,
)
from devices.runtimes import runtime as runtime_entry


@dataclass(frozen=True)
class Artifact:
    runtime: str
    precision: str
    key: str
    path: Path  # the file the runtime loads; companions (OpenVINO's .bin) lie beside it

    @property
    def files(self) -> list[Path]:
        return runtime_entry(self.runtime).files(self.path)


def default_cache_dir() -> Path:
    root = os.environ.get("HURRICANE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "hurricane"
    )
    return Path(root) / "artifacts"


def content_key(
    module: nn.Module,
    example: torch.Tensor,
    runtime: str,
    precision: str,
    calibration: torch.Tensor | None = None,
) -> str:
    """Hash of the module's structure and weights, the input shape, the target and the
    calibration data (an int8 model depends on it)."""
    h = hashlib.sha256()
    h.update(
        json.dumps(
            [
                runtime,
                precision,
                list(example.shape),
                str(example.dtype),
                CONVERTER_VERSION,
                repr(module),
            ]
        ).encode()
    )
    if precision == "int8":
        h.update(INT8_CALIBRATION.encode())
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    if calibration is not None:
        h.update(b"calibration")
        h.update(calibration.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:32]


class ArtifactCache:
    """Converted artifacts on disk, named by content hash; conversion happens at most once."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0

    def path_for(self, key: str, runtime: str) -> Path:
        return self.root / runtime / key[:2] / f"{key}{runtime_entry(runtime).suffix}"

    def get(
        self,
        module: nn.Module,
        example: torch.Tensor,
        runtime: str,
        precision: str = "fp32",
        calibration: torch.Tensor | None = None,
    ) -> Artifact:
        entry = runtime_entry(runtime)
        module = module.eval()
        key = content_key(module, example, runtime, precision, calibration)
        path = self.path_for(key, runtime)
        art = Artifact(runtime, precision, key, path)
        if all(f.exists() for f in art.files):
            self.hits += 1
            return art
        self.misses += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        # Build in a private folder, then move into place: a killed conversion leaves no
        # half-written artifact that a later run would trust.
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            tmp_path = Path(tmp) / path.name
            try:
                with CONVERT_LOCK, torch.no_grad():
                    entry.convert(module, example, tmp_path, precision, calibration)
            except ConversionError:
                raise
            except Exception as exc:  # converters raise many types; keep the first line
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise ConversionError(
                    f"{runtime} conversion failed: {type(exc).__name__}: {first[:300]}"
                ) from exc
            for src, dst in zip(entry.files(tmp_path), art.files):
                shutil.move(str(src), dst)
        return art

    def get_many(
        self,
        items: Sequence[tuple[nn.Module, torch.Tensor]],
        runtime: str,
        precision: str = "fp32",
        chunk: int = 16,
    ) -> list[Artifact | ConversionError]:
        """Artifacts for many blocks. Where the runtime converts a chunk of blocks in one
        converter call, the ones not yet cached go a chunk at a time, and a chunk that fails
        falls back to one call per block so a bad block fails alone. Each result is an
        Artifact or the error."""
        entry = runtime_entry(runtime)
        results: list[Artifact | ConversionError | None] = [None] * len(items)
        todo: list[int] = []
        for i, (module, x) in enumerate(items):
            key = content_key(module.eval(), x, runtime, precision)
            art = Artifact(runtime, precision, key, self.path_for(key, runtime))
            if all(f.exists() for f in art.files):
                self.hits += 1
                results[i] = art
            else:
                todo.append(i)
        if entry.chunk is not None and chunk > 1:
            for start in range(0, len(todo), chunk):
                idx = todo[start : start + chunk]
                if len(idx) < 2:
                    continue
                try:
                    with CONVERT_LOCK, torch.no_grad():
                        parts = entry.chunk([items[i][0] for i in idx], [items[i][1] for i in idx])
                except Exception:  # noqa: BLE001 - any failure: convert these one by one
                    continue
                for i, part in zip(idx, parts):
                    results[i] = self._store_part(
                        items[i][0], items[i][1], part, runtime, precision
                    )
        for i, (module, x) in enumerate(items):
            if results[i] is None:
                try:
                    results[i] = self.get(module, x, runtime, precision)
                except ConversionError as exc:
                    results[i] = exc
        return results  # type: ignore[return-value]

    def _store_part(
        self, module: nn.Module, x: torch.Tensor, data: bytes, runtime: str, precision: str
    ) -> Artifact | ConversionError:
        """One block cut from a chunk's model: stored, then finished (int8 quantization)."""
        entry = runtime_entry(runtime)
        key = content_key(module, x, runtime, precision)
        art = Artifact(runtime, precision, key, self.path_for(key, runtime))
        art.path.parent.mkdir(parents=True, exist_ok=True)
        self.misses += 1
        with tempfile.TemporaryDirectory(dir=art.path.parent) as tmp:
            tmp_path = Path(tmp) / art.path.name
            tmp_path.write_bytes(data)
            finish = entry.finish
            if finish is not None:
                try:
                    with CONVERT_LOCK:
                        quiet(lambda: finish(tmp_path, x, precision))
                except Exception as exc:  # noqa: BLE001
                    return ConversionError(f"{runtime} {precision} conversion failed: {exc}")
            shutil.move(str(tmp_path), art.path)
        return art


Build = Callable[[Any], tuple[nn.Module, torch.Tensor]]


def _convert_task(
    build: Build, items: list[Any], runtime: str, precision: str, cache_root: str, chunk: int
) -> list[str | None]:
    """Worker: build and convert ``items`` into the shared cache; the error of each, or None."""
    torch.set_num_threads(1)
    cache = ArtifactCache(Path(cache_root))
    results = cache.get_many([build(item) for item in items], runtime, precision, chunk)
    return [str(r) if isinstance(r, ConversionError) else None for r in results]


def default_workers(runtime: str) -> int:
    """Conversion workers by default: none for a fast in-process converter, else a core each."""
    return 0 if runtime_entry(runtime).in_process else (os.cpu_count() or 1)


def convert_all(
    build: Build,
    items: Sequence[Any],
    keys: Sequence[str],
    runtime: str,
    precision: str,
    cache: ArtifactCache,
    workers: int | None = None,
    progress: bool = True,
    position: int = 0,
    unit: str = "op",
    task: int | None = None,
) -> dict[str, str]:
    """Convert every item (``build(item)`` gives its module and example; ``build`` must be
    picklable) into the cache before any timing starts, since conversion beside a timed run
    would disturb it; return key -> error for the ones that failed. ``task``: items per
    worker task and per converter call where the runtime converts chunks (default: the
    runtime's). ``workers`` processes (default: ``default_workers``), spawned, since JAX
    (LiteRT's converter) does not survive a fork."""
    entry = runtime_entry(runtime)
    workers = default_workers(runtime) if workers is None else workers
    task = task or entry.task
    errors: dict[str, str] = {}
    pooled = workers > 1 and len(items) >= 2 * workers
    if not pooled and entry.in_process:
        return errors  # converted one by one as they are measured
    bar = tqdm(
        total=len(items),
        desc=f"convert {entry.label}",
        unit=unit,
        disable=not progress,
        position=position,
        dynamic_ncols=True,
    )

    def collect(idx: Sequence[int], errs: Sequence[str | None]) -> None:
        errors.update({keys[i]: e for i, e in zip(idx, errs) if e})
        bar.update(len(idx))

    try:
        if not pooled:
            for start in range(0, len(items), task):
                idx = range(start, min(start + task, len(items)))
                out = cache.get_many([build(items[i]) for i in idx], runtime, precision, task)
                collect(idx, [str(r) if isinstance(r, ConversionError) else None for r in out])
        else:
            per = max(1, min(task, len(items) // (workers * 2)))
            chunks = [range(i, min(i + per, len(items))) for i in range(0, len(items), per)]
            args = (runtime, precision, str(cache.root), task)
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futures = {
                    pool.submit(_convert_task, build, [items[i] for i in idx], *args): idx
                    for idx in chunks
                }
                for fut in as_completed(futures):
                    collect(futures[fut], fut.result())
    finally:
        bar.close()
    return errors
