"""Deployment handoff: the chosen model exported in the device's format, verified on the
device (outputs against PyTorch, latency with the device's protocol), and packed as a
bundle whose ``manifest.json`` says what it is, what produced it and a sha256 of each file.

Bundle files: ``model.tflite`` (LiteRT fp32, or full int8 for a DSP) or ``model.xml`` +
``model.bin`` (OpenVINO IR; FP16 for a VPU) or ``model.onnx`` (ONNX Runtime) — always also
``model.onnx`` — then ``model.pt`` (the PyTorch state dict), ``arch.txt``, ``space.toml``
and ``manifest.json``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import sys
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
from hurricane.data import load_data
from hurricane.errors import UserError
from hurricane.space import SearchSpace
from hurricane.space_file import load_space, space_to_toml
from hurricane.subnet import build_subnet
from pipelines.steps import file_sha256
from profilers.measure import Engine, MemorySink, judge_budget, row_noise
from profilers.models import device_noise
from profilers.session import AgentCrashed, AgentSession

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
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
    saved = torch.load(model_pt, map_location="cpu", weights_only=False)
    arch = space.parse_arch(saved["arch"])
    net = build_subnet(space, arch)
    net.load_state_dict(saved["model"])
    return net.eval(), str(arch)


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
    sink = MemorySink()
    engine = Engine(spec, progress=False, on_open=check)
    rep = engine.run([item], lambda _: art, sink, seed=seed)
    row = sink.rows.get(item)
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
) -> dict[str, Any]:
    """Export, verify on ``spec`` and write the bundle to ``out``; returns the manifest.
    ``db``: the LUT database whose profile runs say how noisy the device is (the budget
    decision allows for it, as the final step's does).

    Built in a temporary folder beside ``out`` and moved into place when complete, so an
    interrupted handoff never leaves a bundle that looks finished."""
    space = load_space(space_ref)
    net, arch = load_final_model(space, model_pt)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    splits = load_data(data, space.resolution, space.in_channels, space.classes)
    gen = torch.Generator().manual_seed(seed)
    batch, _ = splits.test.batch(torch.randperm(len(splits.test), generator=gen)[:samples])
    calib, _ = splits.train.batch(torch.randperm(len(splits.train), generator=gen)[:64])
    example = batch[:1].clone()
    with torch.no_grad():
        reference = net(batch).numpy()
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        work = Path(tmp)
        art = export(net, example, spec, work, calib)
        torch.save(
            {"space": space.name, "arch": arch, "model": net.state_dict()}, work / "model.pt"
        )
        (work / "arch.txt").write_text(arch + "\n")
        (work / "space.toml").write_text(space_to_toml(space, f"The space of {arch}"))
        outputs: dict[str, np.ndarray] = {}
        measured = time_on_device(
            spec,
            art,
            "bundle",
            seed,
            lambda s: outputs.update(got=_infer(s, art, batch)),
            device_noise(db, spec),
        )
        got, fingerprint = outputs["got"], measured.pop("fingerprint")
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
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "hurricane": hurricane.__version__,
            "accepted": not reasons,
            "reasons": reasons,
            "space": {
                "name": space.name,
                "source": space_ref,
                "structure_hash": space.structure_hash(),
                "file": "space.toml",
            },
            "architecture": arch,
            "device": {
                "name": spec.name,
                "kind": spec.kind,
                "spec": spec.source,
                "fingerprint": fingerprint,
            },
            "runtime": {
                "name": spec.runtime.name,
                "precision": spec.runtime.precision,
                "version": measured["runtime_version"],
                "delegate": measured["delegate"],
                "threads": spec.runtime.threads,
            },
            "format": {
                "device": device_format(spec),
                "onnx": "model.onnx",
                "pytorch": "model.pt",
                "input_shape": list(example.shape),
                "input": "float32 NCHW, normalised as the training data",
            },
            "converters": {d: v for d in CONVERTERS if (v := _version(d))},
            "latency": {
                "budget_ms": budget_ms,
                "predicted_ms": predicted_ms,
                "measured_ms": ms,
                "decision": decision,
                "protocol": protocol(spec),
                **{k: v for k, v in measured.items() if k != "latency_ms"},
            },
            "accuracy": {**(accuracy or {}), "data": splits.describe()},
            "verification": {
                "samples": len(batch),
                "from": f"{data} test split, seed {seed}",
                "device": device_check,
                "onnx": onnx_check,
            },
            "host": {
                "python": platform.python_version(),
                "machine": platform.machine(),
                "argv": sys.argv,
            },
            **(extra or {}),
        }
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
    return manifest


def check_files(bundle: str | Path) -> list[str]:
    """Problems with a bundle's files against its manifest (empty when all match)."""
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle}: no {MANIFEST}; is this a Hurricane bundle folder?")
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BundleError(f"{path}: not a readable manifest ({exc}); re-run the handoff") from None
    problems = []
    for name, info in files.items():
        f = bundle / name
        if not f.is_file():
            problems.append(f"{name}: missing")
        elif file_sha256(f) != info["sha256"]:
            problems.append(f"{name}: sha256 differs from the manifest (changed or corrupt)")
    extra = sorted(
        p.name
        for p in bundle.iterdir()
        if p.is_file() and p.name != MANIFEST and p.name not in files
    )
    problems += [f"{name}: not listed in the manifest" for name in extra]
    return problems


def verify_bundle(bundle: str | Path, device: str | None = None, seed: int = 1) -> dict[str, Any]:
    """Re-check a bundle's checksums and, with a device spec, run and time it there again."""
    bundle = Path(bundle)
    problems = check_files(bundle)
    manifest = json.loads((bundle / MANIFEST).read_text())
    result: dict[str, Any] = {
        "bundle": str(bundle),
        "files": len(manifest["files"]),
        "problems": problems,
        "accepted": manifest["accepted"],
    }
    if device is None or problems:
        return result
    spec = load_device(device)
    names = device_format(spec)
    if names[0] not in manifest["files"]:
        raise BundleError(
            f"{bundle}: holds no {names[0]} for {spec.name}'s runtime "
            f"{spec.runtime.name}; it was made for "
            f"{manifest['runtime']['name']}"
        )
    space = load_space(bundle / "space.toml")
    net, _ = load_final_model(space, bundle / "model.pt")
    shape = manifest["format"]["input_shape"]
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
        same = manifest["device"]["name"] == spec.name
        measured = time_on_device(
            spec,
            art,
            "bundle",
            seed,
            lambda s: outputs.update(got=_infer(s, art, x)),
            float(manifest["latency"].get("device_noise") or 0.0) if same else 0.0,
        )
    budget = manifest["latency"].get("budget_ms")
    decision = judge_budget(measured["latency_ms"], budget, measured["noise"])
    result.update(
        device=spec.name,
        measured_ms=measured["latency_ms"],
        manifest_measured_ms=manifest["latency"]["measured_ms"],
        budget_ms=budget,
        within_budget=decision["accepted"],
        decision=decision,
        noise=measured["noise"],
        outputs=compare_outputs(reference, outputs["got"], _tolerance(spec)),
    )
    return result
