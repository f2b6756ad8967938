"""Gathers what a pipeline run made (LUTs, reduced spaces, search histories, measured
candidates, chosen models, bundles) into the plain data ``pipelines.report`` draws."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hurricane.arch import Arch
from hurricane.errors import UserError
from hurricane.latency import USABLE, LatencyModel, read_table
from hurricane.lut import LutDB
from hurricane.lutkeys import OpInstance
from hurricane.provenance import provenance
from hurricane.space import SearchSpace
from pipelines.steps import digest


def lut_grid(space: SearchSpace, table: dict[str, float]) -> dict[str, Any]:
    """Each candidate's latency at each layer, every layer at its widest width."""
    ops = list(dict.fromkeys(op for layer in space.layers for op in layer.ops))
    widest = Arch(
        tuple(layer.ops[0] for layer in space.layers),
        tuple(max(layer.widths) for layer in space.layers),
    )
    channels = space.arch_channels(widest)
    grid: list[list[float | None]] = [[None] * len(space.layers) for _ in ops]
    for i, (layer, (cin, cout)) in enumerate(zip(space.layers, channels)):
        h, w = space.input_shape(i)
        for op in layer.ops:
            inst = OpInstance(op, cin, cout, h, w, layer.stride, space.layer_act(i, op))
            grid[ops.index(op)][i] = table.get(inst.key)
    return {"ops": ops, "layers": list(range(len(space.layers))), "ms": grid}


def _history(folder: Path, stage: str) -> list[dict[str, Any]]:
    path = folder / "history.jsonl"
    if not path.exists():
        return []
    return [{"stage": stage, **json.loads(line)} for line in path.read_text().splitlines()]


def measured_models(space: SearchSpace, db: str, device: str) -> list[dict[str, Any]]:
    """Every whole model of this space's structure timed on the device (candidates checked
    before a final choice, ``latency validate`` runs) against the latency model."""
    with LutDB(db) as lut:
        rows = lut.models(lut.device_id(device), space.structure_hash())
    archs, measured = [], []
    for arch, row in rows.items():
        if row["status"] in USABLE:
            try:
                archs.append(space.parse_arch(arch))
            except UserError:  # timed for another space of the same shapes
                continue
            measured.append(row["median_ms"])
    if not archs:
        return []
    predicted = LatencyModel.from_db(space, db, device).predict(archs)
    return [
        {"arch": str(a), "predicted_ms": float(p), "measured_ms": float(m)}
        for a, p, m in zip(archs, predicted, measured)
    ]


def device_data(run: Any, res: dict[str, Any]) -> dict[str, Any]:
    spec, dev = res["spec"], res["device"]
    table = read_table(run.space, run.p.db, dev)
    history, models, coexplore, golden = [], [], [], []
    for label, b in res["budgets"].items():
        srch = b.get("search") or (run.steps.record(f"search-{dev}-{label}") or {}).get("outputs")
        if srch and srch.get("coexplore"):
            coexplore.append({"budget_ms": b["budget_ms"], **srch["coexplore"]})
        work = run.root / dev / label
        history += _history(work / "search_a", f"{label} A") + _history(
            work / "search_b", f"{label} B"
        )
        history += _history(work / "search", label)
        fin, hand = b["final"], b.get("handoff") or {}
        arch = Arch.parse(fin["arch"])
        bundle = hand.get("bundle")
        if fin.get("depths"):
            golden.append(_golden(run, dev, b["budget_ms"], fin, bundle))
        models.append(
            {
                "budget_ms": b["budget_ms"],
                "arch": fin["arch"],
                "ops": list(arch.ops),
                "widths": list(arch.widths),
                "predicted_ms": fin.get("predicted_ms"),
                "measured_ms": hand.get("measured_ms", fin.get("measured_ms")),
                "test_acc": fin.get("test_acc"),
                "val_acc": fin.get("fitness"),
                "accepted": hand.get("accepted", fin.get("accepted")),
                "bundle": str(Path(bundle).relative_to(run.root)) if bundle else None,
            }
        )
    scatter = measured_models(run.space, run.p.db, dev)
    rt = spec.runtime
    return {
        "name": dev,
        "kind": spec.kind,
        "runtime": f"{rt.name} {rt.precision}",
        "lut": lut_grid(run.space, table),
        "reduced_ops": res["shrink"].get("kept"),
        "history": history,
        "scatter": scatter,
        "models": models,
        "coexplore": coexplore,
        "goldennets": golden,
    }


def _golden(run: Any, dev: str, budget_ms: float, fin: dict, bundle: str | None) -> dict:
    """A GoldenNet's depths: test accuracy, latency measured in its bundle (where there is
    one) and predicted by the device's LUT."""
    measured: dict[str, float] = {}
    manifest = Path(bundle) / "manifest.json" if bundle else None
    if manifest is not None and manifest.is_file():
        listed = json.loads(manifest.read_text()).get("adaptive", {}).get("depths", [])
        measured = {d["name"]: d["measured_ms"] for d in listed}
    predicted: list[float | None] = [None] * len(fin["depths"])
    try:
        model = LatencyModel.from_db(run.space, run.p.db, dev)
        archs = [run.space.parse_arch(d["arch"]) for d in fin["depths"]]
        predicted = [float(ms) for ms in model.predict(archs)]
    except UserError:  # the table lacks an instance a variant needs
        pass
    return {
        "budget_ms": budget_ms,
        "arch": fin["arch"],
        "depths": [
            {
                "name": d["name"],
                "blocks": d.get("blocks"),
                "test_acc": d["test_acc"],
                "measured_ms": measured.get(d["name"]),
                "predicted_ms": ms,
            }
            for d, ms in zip(fin["depths"], predicted)
        ],
    }


def build_report(run: Any) -> dict[str, Any]:
    """Write ``RUN/report/index.html``; returns its path and a digest of what it shows."""
    from pipelines.report import write_report

    space = run.space
    data = {
        "title": f"Hurricane run {run.p.name}",
        "pipeline": run.p.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "provenance": provenance(),
        "space": {
            "name": space.name,
            "layers": [
                {
                    "index": i,
                    "cout": lay.cout,
                    "stride": lay.stride,
                    "input_hw": list(space.input_shape(i)),
                }
                for i, lay in enumerate(space.layers)
            ],
        },
        "devices": [device_data(run, res) for res in run.results.values()],
    }
    out = run.root / "report"
    index = write_report(out, data)
    (out / "report.json").write_text(json.dumps(data, indent=1, default=str))
    return {"index": str(index), "digest": digest(data["devices"])}
