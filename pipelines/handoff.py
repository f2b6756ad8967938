"""Deployment handoff: the chosen model exported in the device's format, verified on the
device (outputs against PyTorch, latency with the device's protocol), and packed as a
bundle whose ``manifest.json`` says what it is, what produced it and a sha256 of each file.

Bundle files: ``model.tflite`` (LiteRT fp32, or full int8 for a DSP) or ``model.xml`` +
``model.bin`` (OpenVINO IR; FP16 for a VPU) or ``model.onnx`` (ONNX Runtime) — always also
``model.onnx`` — then ``model.pt`` (the PyTorch state dict), ``arch.txt``, ``space.toml``
and ``manifest.json``. A GoldenNet's bundle adds each shallower depth as ``depth-NAME.*``
(device format and ONNX), every depth's weights in ``adaptive.pt``, and ``selector.py``,
which switches between the depths on the device.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import hurricane
from devices.artifacts import Artifact
from devices.runtimes import COMMON_DISTS, ONNX_COPY, REGISTRY
from devices.spec import DeviceSpec, load_device
from hurricane.data import DataSplits, TensorImages, load_data
from hurricane.errors import UserError
from hurricane.provenance import portable_path, provenance
from hurricane.space import SearchSpace
from hurricane.space_file import load_space, space_to_toml
from hurricane.subnet import build_subnet
from hurricane.train import load_tensors
from pipelines.steps import file_sha256
from profilers.measure import Engine, MemorySink, judge_budget, row_noise
from profilers.models import device_noise
from profilers.session import AgentCrashed, AgentSession

MANIFEST = "manifest.json"
# The on-device switcher between a GoldenNet's depths, shipped in its bundle.
SELECTOR = Path(__file__).resolve().parents[1] / "profilers" / "agent" / "selector.py"
MANIFEST_VERSION = 1
SHA256 = re.compile(r"[0-9a-f]{64}")
# Host packages whose versions a bundle records: every runtime's, and the ONNX copy's.
CONVERTERS = tuple(dict.fromkeys([*COMMON_DISTS, *(d for r in REGISTRY.values() for d in r.dists)]))


class BundleError(UserError):
    """A bundle that fails its checks."""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def load_final_model(space: SearchSpace, model_pt: str | Path) -> tuple[torch.nn.Module, str]:
    """The network a final ``model.pt`` holds. Tensors and plain values only: a bundle is
    data, and a file that would need a full unpickle (which can run code) is refused."""
    saved = load_tensors(model_pt, "final model", BundleError)
    if not isinstance(saved.get("arch"), str):
        raise BundleError(f"{model_pt}: no architecture ('arch'); use a file Hurricane wrote")
    arch = space.parse_arch(saved["arch"])
    net = build_subnet(space, arch)
    try:
        net.load_state_dict(saved["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise BundleError(f"{model_pt}: its weights do not fit {arch} ({first})") from None
    return net.eval(), str(arch)


def data_digest(splits: DataSplits) -> str:
    """sha256 of a data set's splits as loaded: its images and labels (in-memory data), or
    its files' names, sizes and labels (an image folder, whose files are read on demand), so
    the same data gives the same digest wherever it lives."""
    h = hashlib.sha256()
    for part in (splits.train, splits.val, splits.test):
        h.update(f"{len(part)}\n".encode())
        h.update(part.labels.numpy().tobytes())
        if isinstance(part, TensorImages):
            h.update(str(tuple(part.images.shape)).encode())
            h.update(part.images.contiguous().numpy().tobytes())
        else:
            for f in part.files:
                h.update(f"{f.parent.name}/{f.name} {f.stat().st_size}\n".encode())
    return h.hexdigest()


def portable(value: Any) -> Any:
    """``value`` (JSON-like) with every string made portable (``portable_path``)."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [portable(v) for v in value]
    return portable_path(value) if isinstance(value, str) else value


def device_format(spec: DeviceSpec) -> list[str]:
    """The file names of the model in this device's runtime format."""
    return list(spec.runtime.entry.handoff_files)


def export(
    net: torch.nn.Module,
    example: torch.Tensor,
    spec: DeviceSpec,
    out: Path,
    calibration: torch.Tensor,
) -> Artifact:
    """Write the device's artifact and the ONNX copy into ``out``; int8 is calibrated on
    ``calibration`` (real training images, not noise)."""
    rt = spec.runtime
    path = out / device_format(spec)[0]
    with torch.no_grad():
        ONNX_COPY.convert(net, example, out / ONNX_COPY.handoff_files[0], "fp32", None)
        if not path.exists():  # an ONNX Runtime device loads the copy itself
            rt.entry.convert(net, example, path, rt.precision, calibration)
    return Artifact(rt.name, rt.precision, f"bundle-{os.getpid()}", path)


def compare_outputs(
    reference: np.ndarray, got: np.ndarray, tolerance: tuple[float, float]
) -> dict[str, Any]:
    """Agreement of a runtime's outputs with PyTorch's on the same batch, and whether it is
    within ``tolerance`` (the runtime's for its precision: relative error, least top-1
    agreement; devices/runtimes.py). A sample's class agrees when the runtime's top class is
    PyTorch's, or within the tolerance of it in PyTorch's own logits (a near-tie that
    rounding may flip either way)."""
    tol, need = tolerance
    scale = float(np.abs(reference).max()) or 1.0
    if got.shape != reference.shape:
        return {
            "max_abs_error": float("inf"),
            "output_scale": scale,
            "relative_error": float("inf"),
            "tolerance_relative": tol,
            "top1_agreement": 0.0,
            "min_top1_agreement": need,
            "passed": False,
            "shape": [list(got.shape), list(reference.shape)],
        }
    err = float(np.abs(reference - got).max())
    picked = reference[np.arange(len(got)), got.argmax(1)]
    agree = float((picked >= reference.max(1) - tol * scale).mean())
    return {
        "max_abs_error": err,
        "output_scale": scale,
        "relative_error": err / scale,
        "tolerance_relative": tol,
        "top1_agreement": agree,
        "min_top1_agreement": need,
        "top1_exact": float((reference.argmax(1) == got.argmax(1)).mean()),
        "passed": bool(err / scale <= tol and agree >= need),
    }


def _tolerance(spec: DeviceSpec) -> tuple[float, float]:
    return spec.runtime.entry.tolerance[spec.runtime.precision]


def _onnx_outputs(path: Path, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: batch[i : i + 1]})[0] for i in range(len(batch))])


def _infer(session: AgentSession, art: Artifact, batch: torch.Tensor) -> np.ndarray:
    try:
        return session.infer("bundle", art, batch.numpy())
    except AgentCrashed as exc:
        raise BundleError(f"the exported model crashed the device's runtime: {exc}") from None


def time_on_device(
    spec: DeviceSpec,
    art: Artifact,
    item: str,
    seed: int,
    check: Callable[[AgentSession], None] | None = None,
    device_noise: float = 0.0,
) -> dict[str, Any]:
    """The model's latency on the device, timed by the measurement engine exactly as the
    final step timed the chosen model (batched with the drift reference, the spec's passes,
    noisy ones measured again), so both give the same figure within the device's noise.
    ``check`` runs once in the first agent session, before any timing (the output check)."""
    return time_models_on_device(spec, {item: art}, seed, check, device_noise)[item]


def time_models_on_device(
    spec: DeviceSpec,
    arts: dict[str, Artifact],
    seed: int,
    check: Callable[[AgentSession], None] | None = None,
    device_noise: float = 0.0,
) -> dict[str, dict[str, Any]]:
    """``time_on_device`` for several models in one batch (a GoldenNet's depths): each
    item's figures, all under the same drift reference."""
    sink = MemorySink()
    engine = Engine(spec, progress=False, on_open=check)
    rep = engine.run(list(arts), arts.__getitem__, sink, seed=seed)
    return {item: _timed(spec, rep, sink.rows.get(item), device_noise) for item in arts}


def _timed(spec: DeviceSpec, rep: Any, row: dict | None, device_noise: float) -> dict[str, Any]:
    if row is None or row["status"] == "error":
        why = row["error"] if row else "no timing came back"
        raise BundleError(f"{spec.name}: the exported model failed to run: {why}")
    noise = row_noise(row, max(rep.noise_floor or 0.0, device_noise))
    return {
        "latency_ms": row["median_ms"],
        "round_cv": row["round_cv"],
        "noisy": row["status"] == "noisy",
        "attempts": row["attempts"],
        "samples_ms": row["samples_ms"],
        "passes_ms": row["passes"],
        "runtime": spec.runtime.name,
        "runtime_version": row.get("runtime_version"),
        "delegate": row.get("delegate"),
        "noise": round(noise, 4),
        "device_noise": device_noise,
        "noise_floor": rep.noise_floor,
        "drift": rep.drift,
        "fingerprint": rep.fingerprint,
    }


def protocol(spec: DeviceSpec) -> dict[str, Any]:
    m = spec.measure
    return {
        "warmup": m.warmup,
        "rounds": m.rounds,
        "runs": m.runs,
        "min_round_ms": m.min_round_ms,
        "statistic": f"{m.statistic} of round medians",
        "cv_threshold": m.cv_threshold,
        "max_remeasure": m.max_remeasure,
        "batch": 1,
        "passes": m.passes,
        "threads": spec.runtime.threads,
    }


def make_bundle(
    space_ref: str,
    model_pt: str | Path,
    spec: DeviceSpec,
    out: str | Path,
    budget_ms: float | None,
    predicted_ms: float | None = None,
    accuracy: dict[str, Any] | None = None,
    data: str = "fashion-mnist",
    samples: int = 32,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
    db: str | Path | None = None,
    keep_local: bool = False,
    hardware: dict[str, Any] | None = None,
    golden: str | Path | None = None,
    depth_accuracy: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Export, verify on ``spec`` and write the bundle to ``out``; returns the manifest.
    ``golden``: a GoldenNet's ``adaptive.pt`` (``model_pt`` its full depth): every depth is
    exported, checked and timed with the full one, listed in ``manifest.adaptive`` with its
    test accuracy from ``depth_accuracy``, and ``selector.py`` switches between them.
    ``hardware``: a co-explored pair's hardware half (``hardware_of``): recorded in the
    manifest, its files (a ready device spec) carried in the bundle.
    ``db``: the LUT database whose profile runs say how noisy the device is (the budget
    decision allows for it, as the final step's does).

    The manifest says what reproduces the result (versions, commit, settings, the data
    set's name and digest) and no more: paths are made relative (``portable_path``), the
    host's name is left out, and ``extra`` is recorded the same way. ``keep_local`` keeps
    them as they are, for a bundle that stays in-house.

    Built in a temporary folder beside ``out`` and moved into place when complete, so an
    interrupted handoff never leaves a bundle that looks finished."""
    space, net, arch, splits, batch, calib, reference = _prepare(
        space_ref, model_pt, data, samples, seed
    )
    local = (lambda text: text) if keep_local else portable_path
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = batch[:1].clone()
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        work = Path(tmp)
        art = export(net, example, spec, work, calib)
        _write_model(work, space, net, arch, hardware)
        depths = _export_depths(space, golden, example, spec, work, calib) if golden else {}
        arts = {"bundle": art, **{item: d[1] for item, d in depths.items()}}
        outputs: dict[str, np.ndarray] = {}

        def check(session: AgentSession) -> None:
            outputs.update({item: _infer(session, a, batch) for item, a in arts.items()})

        timed = time_models_on_device(spec, arts, seed, check, device_noise(db, spec))
        measured = timed["bundle"]
        got, fingerprint = outputs["bundle"], measured.pop("fingerprint")
        described = {**splits.describe(), "digest": data_digest(splits)}
        described["source"] = local(described["source"])
        if not keep_local:  # the device's host name (this host's, for a local device)
            fingerprint = {k: v for k, v in (fingerprint or {}).items() if k != "hostname"}
        device_check = compare_outputs(reference, got, _tolerance(spec))
        onnx_check = compare_outputs(
            reference,
            _onnx_outputs(work / "model.onnx", batch.numpy()),
            ONNX_COPY.tolerance["fp32"],
        )
        ms = measured["latency_ms"]
        decision = judge_budget(ms, budget_ms, measured["noise"])
        reasons = []
        if not decision["accepted"]:
            reasons.append(
                f"measured {ms:.4g} ms on {spec.name}, over the {budget_ms:g} ms budget by more "
                f"than its noise ({decision['noise']:.1%})"
            )
        if not device_check["passed"]:
            reasons.append(
                f"{spec.runtime.name} outputs differ from PyTorch "
                f"(relative error {device_check['relative_error']:.3g}, top-1 "
                f"agreement {device_check['top1_agreement']:.0%})"
            )
        if not onnx_check["passed"]:
            reasons.append("the ONNX copy's outputs differ from PyTorch")
        adaptive = None
        if golden:
            adaptive = _depth_records(
                spec, work, depths, timed, outputs, batch, measured, budget_ms, depth_accuracy
            )
            adaptive["depths"][0]["test_acc"] = (accuracy or {}).get("test_acc")
            reasons += [
                f"depth {d['name']}: {spec.runtime.name} outputs differ from PyTorch "
                f"(relative error {d['verification']['device']['relative_error']:.3g})"
                for d in adaptive["depths"][1:]
                if not d["verification"]["device"]["passed"]
            ]
            shutil.copy(SELECTOR, work / SELECTOR.name)
            shutil.copy(golden, work / adaptive["checkpoint"])
        manifest = {
            **_manifest_head(space, space_ref, arch, reasons, local),
            "device": {
                "name": spec.name,
                "kind": spec.kind,
                "spec": local(spec.source),
                "fingerprint": fingerprint,
            },
            "runtime": {
                "name": spec.runtime.name,
                "precision": spec.runtime.precision,
                "version": measured["runtime_version"],
                "delegate": measured["delegate"],
                "threads": spec.runtime.threads,
                # What the on-device agent was told, so the deployment matches the timing.
                "settings": spec.runtime.agent_options(),
                "affinity": list(spec.affinity),
            },
            "format": _format(device_format(spec), example),
            "converters": {d: v for d in CONVERTERS if (v := _version(d))},
            "latency": {
                "budget_ms": budget_ms,
                "predicted_ms": predicted_ms,
                "measured_ms": ms,
                "decision": decision,
                "protocol": protocol(spec),
                **{k: v for k, v in measured.items() if k != "latency_ms"},
            },
            "accuracy": {**(accuracy or {}), "data": described},
            "verification": {
                "samples": len(batch),
                "from": f"{local(data)} test split, seed {seed}",
                "device": device_check,
                "onnx": onnx_check,
            },
            **(portable(extra or {}) if not keep_local else (extra or {})),
            **({"hardware": _hardware_record(hardware, local)} if hardware else {}),
            **({"adaptive": adaptive} if adaptive else {}),
            # Recorded here, after ``extra``: a caller's own provenance() has the host name.
            "provenance": provenance(keep_local),
        }
        _seal(work, out, manifest)
    return manifest


def _export_depths(
    space: SearchSpace,
    golden: str | Path,
    example: torch.Tensor,
    spec: DeviceSpec,
    work: Path,
    calib: torch.Tensor,
) -> dict[str, tuple[Any, Artifact, torch.nn.Module]]:
    """Every depth but the full one in the device's format and as ONNX, as
    ``depth-NAME.*`` beside the full depth's ``model.*``: (variant, artifact, network) per
    timing item."""
    from hurricane.adaptive import load_adaptive

    net = load_adaptive(space, golden).eval()
    out: dict[str, tuple[Any, Artifact, torch.nn.Module]] = {}
    for v in net.variants[1:]:
        sub = net.extract(v.arch).eval()
        tmp = work / f".depth-{v.name}"
        tmp.mkdir()
        made = export(sub, example, spec, tmp, calib)
        for f in sorted(tmp.iterdir()):
            os.replace(f, work / f"depth-{v.name}{f.suffix}")
        tmp.rmdir()
        path = work / f"depth-{v.name}{made.path.suffix}"
        item = f"depth-{v.name}"
        out[item] = (v, Artifact(made.runtime, made.precision, f"{made.key}-{v.name}", path), sub)
    return out


def _depth_records(
    spec: DeviceSpec,
    work: Path,
    depths: dict[str, tuple[Any, Artifact, torch.nn.Module]],
    timed: dict[str, dict[str, Any]],
    outputs: dict[str, np.ndarray],
    batch: torch.Tensor,
    full: dict[str, Any],
    budget_ms: float | None,
    depth_accuracy: dict[str, float] | None,
) -> dict[str, Any]:
    """``manifest.adaptive``: every depth, deepest first, with its files, test accuracy,
    latency measured in the same batch as the full depth, and output checks."""
    acc = depth_accuracy or {}
    names = device_format(spec)
    records = [
        {
            "name": "full",
            "dropped": [],
            "file": names[0],
            "files": names,
            "measured_ms": full["latency_ms"],
            "noise": full["noise"],
        }
    ]
    for item, (v, art, sub) in depths.items():
        with torch.no_grad():
            reference = sub(batch).numpy()
        t = timed[item]
        records.append(
            {
                "name": v.name,
                "arch": str(v.arch),
                "dropped": list(v.dropped),
                "blocks": v.blocks,
                "file": art.path.name,
                "files": [f"{item}{Path(n).suffix}" for n in names],
                "onnx": f"{item}.onnx",
                "test_acc": acc.get(v.name),
                "measured_ms": t["latency_ms"],
                "noise": t["noise"],
                "round_cv": t["round_cv"],
                "decision": judge_budget(t["latency_ms"], budget_ms, t["noise"]),
                "verification": {
                    "device": compare_outputs(reference, outputs[item], _tolerance(spec)),
                    "onnx": compare_outputs(
                        reference,
                        _onnx_outputs(work / f"{item}.onnx", batch.numpy()),
                        ONNX_COPY.tolerance["fp32"],
                    ),
                },
            }
        )
    return {"depths": records, "checkpoint": "adaptive.pt", "selector": SELECTOR.name}


def _manifest_head(
    space: SearchSpace,
    space_ref: str,
    arch: str,
    reasons: list[str],
    local: Callable[[str], str],
) -> dict[str, Any]:
    return {
        "manifest_version": MANIFEST_VERSION,
        "hurricane": hurricane.__version__,
        "accepted": not reasons,
        "reasons": reasons,
        "space": {
            "name": space.name,
            "source": local(space_ref),
            "structure_hash": space.structure_hash(),
            "file": "space.toml",
        },
        "architecture": arch,
    }


def _format(device_files: list[str], example: torch.Tensor) -> dict[str, Any]:
    return {
        "device": device_files,
        "onnx": ONNX_COPY.handoff_files[0],
        "pytorch": "model.pt",
        "input_shape": list(example.shape),
        "input": "float32 NCHW, normalised as the training data",
    }


def _prepare(
    space_ref: str, model_pt: str | Path, data: str, samples: int, seed: int
) -> tuple[SearchSpace, torch.nn.Module, str, DataSplits, torch.Tensor, torch.Tensor, np.ndarray]:
    """The model, its data, the seeded test batch the outputs are compared on, training
    images for int8 calibration, and PyTorch's outputs on the batch."""
    space = load_space(space_ref)
    net, arch = load_final_model(space, model_pt)
    splits = load_data(data, space.resolution, space.in_channels, space.classes)
    gen = torch.Generator().manual_seed(seed)
    batch, _ = splits.test.batch(torch.randperm(len(splits.test), generator=gen)[:samples])
    calib, _ = splits.train.batch(torch.randperm(len(splits.train), generator=gen)[:64])
    with torch.no_grad():
        reference = net(batch).numpy()
    return space, net, arch, splits, batch, calib, reference


def _write_model(
    work: Path, space: SearchSpace, net: torch.nn.Module, arch: str, hardware: dict | None
) -> None:
    """What every bundle holds besides the exports: weights, the architecture, its space,
    and the hardware half's files of a co-explored pair."""
    torch.save({"space": space.name, "arch": arch, "model": net.state_dict()}, work / "model.pt")
    (work / "arch.txt").write_text(arch + "\n")
    (work / "space.toml").write_text(space_to_toml(space, f"The space of {arch}"))
    for name, text in (hardware or {}).get("files", {}).items():
        (work / name).write_text(text)


def _seal(work: Path, out: Path, manifest: dict[str, Any]) -> None:
    """List every file with its sha256 in the manifest and move the bundle into place."""
    manifest["files"] = {
        p.name: {"sha256": file_sha256(p), "bytes": p.stat().st_size}
        for p in sorted(work.iterdir())
        if p.is_file()
    }
    (work / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(work, out)
    work.mkdir()  # the context manager removes the (now empty) temporary name


def make_modelled_bundle(
    space_ref: str,
    model_pt: str | Path,
    out: str | Path,
    hardware: dict[str, Any],
    budget_ms: float | None,
    modelled: dict[str, Any],
    accuracy: dict[str, Any] | None = None,
    data: str = "fashion-mnist",
    samples: int = 32,
    seed: int = 0,
    keep_local: bool = False,
) -> dict[str, Any]:
    """A bundle for hardware that exists only as a model (an accelerator design costed by
    zigzag-dse): the ONNX copy (what zigzag reads), checked against PyTorch on this host;
    the design's files (``hardware``); and the modelled latency and energy (``modelled``:
    ``latency_ms``, ``energy_mj``, ``model``) judged against the budget. Nothing was timed,
    so the manifest says so and the decision has no noise to allow for."""
    space, net, arch, splits, batch, _, reference = _prepare(
        space_ref, model_pt, data, samples, seed
    )
    local = (lambda text: text) if keep_local else portable_path
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = batch[:1].clone()
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        work = Path(tmp)
        onnx = work / ONNX_COPY.handoff_files[0]
        with torch.no_grad():
            ONNX_COPY.convert(net, example, onnx, "fp32", None)
        _write_model(work, space, net, arch, hardware)
        onnx_check = compare_outputs(
            reference, _onnx_outputs(onnx, batch.numpy()), ONNX_COPY.tolerance["fp32"]
        )
        ms = float(modelled["latency_ms"])
        decision = judge_budget(ms, budget_ms, 0.0)
        reasons = []
        if not decision["accepted"]:
            reasons.append(f"modelled {ms:.4g} ms on {hardware['config']}, over {budget_ms:g} ms")
        if not onnx_check["passed"]:
            reasons.append("the ONNX copy's outputs differ from PyTorch")
        described = {**splits.describe(), "digest": data_digest(splits)}
        described["source"] = local(described["source"])
        manifest = {
            **_manifest_head(space, space_ref, arch, reasons, local),
            "device": {"name": hardware["config"], "kind": "accelerator", "modelled": True},
            "format": _format([ONNX_COPY.handoff_files[0]], example),
            "converters": {d: v for d in CONVERTERS if (v := _version(d))},
            "latency": {
                "budget_ms": budget_ms,
                "modelled_ms": ms,
                "measured_ms": None,
                "energy_mj": modelled.get("energy_mj"),
                "model": modelled.get("model"),
                "decision": decision,
            },
            "accuracy": {**(accuracy or {}), "data": described},
            "verification": {
                "samples": len(batch),
                "from": f"{local(data)} test split, seed {seed}",
                "onnx": onnx_check,
            },
            "hardware": {
                **_hardware_record(hardware, local),
                "spec": None,
                "description": hardware.get("description"),
            },
            "provenance": provenance(keep_local),
        }
        _seal(work, out, manifest)
    return manifest


def hardware_of(final: dict[str, Any]) -> dict[str, Any] | None:
    """The hardware half ``final.json`` records for a co-explored pair, with its ready
    device spec to carry (None for a search on the device's own settings)."""
    hw = final.get("hardware")
    if not hw:
        return None
    path = Path(hw["file"])
    if not path.is_file():
        raise BundleError(
            f"{path}: the chosen configuration's device spec is missing; run the "
            "pipeline's final step again (hurricane run resumes it)"
        )
    return {**hw, "files": {"hardware.toml": path.read_text()}}


def _hardware_record(hardware: dict[str, Any], local: Callable[[str], str]) -> dict[str, Any]:
    return {
        "space": hardware["space"],
        "source": local(hardware["source"]),
        "config": hardware["config"],
        "knobs": hardware["knobs"],
        "spec": "hardware.toml",  # load it with --device to run as it was timed
    }


def _manifest_path(bundle: Path) -> Path:
    path = bundle / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle}: no {MANIFEST}; is this a Hurricane bundle folder?")
    return path


def manifest_digest(bundle: str | Path) -> str:
    """sha256 of the bundle's ``manifest.json``: the one figure to pin. The manifest holds
    every other file's sha256, so a bundle whose manifest has this digest and whose files
    match it is, byte for byte, the bundle that digest was taken of."""
    return file_sha256(_manifest_path(Path(bundle)))


def read_manifest(bundle: str | Path) -> dict[str, Any]:
    """A bundle's manifest, with its ``files`` table checked: each entry a file name of
    this folder with a sha256, so that every file can be checked against it."""
    path = _manifest_path(Path(bundle))
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not a readable manifest ({exc}); re-run the handoff") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{path}: no 'files' table; re-run the handoff")
    for name, info in files.items():
        if name in ("", ".", "..", MANIFEST) or Path(name).name != name or "\\" in name:
            raise BundleError(
                f"{path}: files entry {name!r} is not a file of the bundle folder; "
                "re-run the handoff"
            )
        sha = info.get("sha256") if isinstance(info, dict) else None
        if not isinstance(sha, str) or not SHA256.fullmatch(sha):
            raise BundleError(
                f"{path}: files entry {name!r} has no sha256 (64 hex digits), so {name} "
                "cannot be checked; re-run the handoff"
            )
    if not isinstance(manifest.get("accepted"), bool):
        raise BundleError(f"{path}: no 'accepted' verdict (true or false); re-run the handoff")
    return manifest


def check_files(bundle: str | Path) -> list[str]:
    """Problems with a bundle's files against its manifest (empty when all match). What
    cannot be checked at all is a ``BundleError``: a manifest entry without its sha256, or
    a file or folder in the bundle that the manifest does not list."""
    bundle = Path(bundle)
    files = read_manifest(bundle)["files"]
    extra = sorted(
        p.name + ("/" if p.is_dir() else "")
        for p in bundle.iterdir()
        if p.name != MANIFEST and p.name not in files
    )
    if extra:
        raise BundleError(
            f"{bundle}: {', '.join(extra)} not listed in its {MANIFEST}; a bundle holds only "
            "the files its manifest lists: remove them, or re-run the handoff"
        )
    problems = []
    for name, info in files.items():
        f = bundle / name
        if f.is_symlink():
            problems.append(f"{name}: a link, not a file of the bundle")
        elif not f.is_file():
            problems.append(f"{name}: missing")
        elif file_sha256(f) != info["sha256"]:
            problems.append(f"{name}: sha256 differs from the manifest (changed or corrupt)")
    return problems


def check_digest(bundle: str | Path, digest: str) -> str:
    """Refuse a bundle whose manifest's sha256 is not the pinned ``digest``; returns it."""
    want = digest.strip().lower()
    if not SHA256.fullmatch(want):
        raise UserError(
            f"--digest {digest}: not a sha256 (64 hex digits); give the manifest digest "
            "printed when the bundle was made"
        )
    got = manifest_digest(bundle)
    if got != want:
        raise BundleError(
            f"{Path(bundle) / MANIFEST}: sha256 {got}, not the pinned {want}; this is not the "
            "bundle you pinned: get it again from whoever made it"
        )
    return got


def verify_bundle(
    bundle: str | Path, device: str | None = None, seed: int = 1, digest: str | None = None
) -> dict[str, Any]:
    """Re-check a bundle's checksums (and, with ``digest``, that its manifest is the pinned
    one) and, with a device spec, run and time it there again. ``ok`` in the result is
    whether it passes: files match, outputs match, and both the manifest's verdict and the
    new measurement accept it."""
    bundle = Path(bundle)
    if digest is not None:
        check_digest(bundle, digest)
    problems = check_files(bundle)
    manifest = read_manifest(bundle)
    result: dict[str, Any] = {
        "bundle": str(bundle),
        "files": len(manifest["files"]),
        "problems": problems,
        "accepted": manifest["accepted"],
        "digest": manifest_digest(bundle),
        "pinned": digest is not None,
        "ok": not problems and manifest["accepted"],
    }
    if device is None or problems:
        return result
    if (manifest.get("device") or {}).get("modelled"):
        raise BundleError(
            f"{bundle}: made for {manifest['device'].get('name')}, an accelerator that exists "
            "only as zigzag-dse's model: there is no device to time it on; verify it "
            "without --device"
        )
    spec = load_device(device)
    names = device_format(spec)
    try:
        made_for, made_on = manifest["runtime"]["name"], manifest["device"]["name"]
        latency = manifest["latency"]
        recorded_ms, budget = latency["measured_ms"], latency.get("budget_ms")
        noise = float(latency.get("device_noise") or 0.0)
        shape = [int(n) for n in manifest["format"]["input_shape"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(
            f"{bundle / MANIFEST}: lacks a readable {exc} field; re-run the handoff"
        ) from None
    if any(n not in manifest["files"] for n in names):
        raise BundleError(
            f"{bundle}: holds no {' + '.join(names)} for {spec.name}'s runtime "
            f"{spec.runtime.name}; it was made for {made_for}"
        )
    space = load_space(bundle / "space.toml")
    net, _ = load_final_model(space, bundle / "model.pt")
    x = torch.randn(8, *shape[1:], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        reference = net(x).numpy()
    # Hash-named copy so a device that already holds another bundle's model.* re-uploads.
    with tempfile.TemporaryDirectory() as tmp:
        key = manifest["files"][names[0]]["sha256"][:16]
        for n in names:
            shutil.copy(bundle / n, Path(tmp) / f"{key}{Path(n).suffix}")
        art = Artifact(
            spec.runtime.name,
            spec.runtime.precision,
            key,
            Path(tmp) / f"{key}{Path(names[0]).suffix}",
        )
        outputs: dict[str, np.ndarray] = {}
        measured = time_on_device(
            spec,
            art,
            "bundle",
            seed,
            lambda s: outputs.update(got=_infer(s, art, x)),
            noise if made_on == spec.name else 0.0,
        )
    decision = judge_budget(measured["latency_ms"], budget, measured["noise"])
    check = compare_outputs(reference, outputs["got"], _tolerance(spec))
    result.update(
        device=spec.name,
        measured_ms=measured["latency_ms"],
        manifest_measured_ms=recorded_ms,
        budget_ms=budget,
        within_budget=decision["accepted"],
        decision=decision,
        noise=measured["noise"],
        outputs=check,
        ok=result["ok"] and decision["accepted"] and check["passed"],
    )
    return result
