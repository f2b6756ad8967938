"""The jobs users run — profile, generate, handoff — as resumable steps of one pipeline.

``run_pipeline`` runs, per device: ``profile`` (the LUT), ``shrink`` (stage one), ``supernet``
(stage A of the two-stage training, or the SPOS supernet), and per budget ``search`` (stage
A's search, stage B, its search), ``final`` (device check of the best candidates, fine-tune,
test accuracy) and ``handoff`` (bundle); then one ``report``. Each step's inputs are the
settings it reads plus the digests of the steps it uses (``pipelines.steps``), so a re-run
does only what a change touches. ``hurricane generate`` is the same chain without handoff.

Run folder (``Pipeline.out``): ``DEVICE/shrink/space.toml``, ``DEVICE/supernet/``,
``DEVICE/BUDGET/`` (searches, stage B, ``final.json``, ``final/model.pt``), ``bundles/
DEVICE-BUDGET/``, ``report/index.html``, ``steps/*.json`` and ``pipeline.json``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from devices.spec import DeviceSpec, load_device
from hurricane.adaptive import AdaptiveSettings
from hurricane.compute import TrainOn, is_main, main_only
from hurricane.errors import UserError
from hurricane.final import train_final
from hurricane.latency import LatencyModel, fill_missing, predicted_note, read_table
from hurricane.lut import LutDB
from hurricane.names import child_path
from hurricane.provenance import provenance
from hurricane.reduce import reduce_space, scores_json
from hurricane.search import EvolutionSearch
from hurricane.space import SearchSpace
from hurricane.space_file import load_space, space_to_toml
from hurricane.stage_a import default_split, stage_a_base
from hurricane.train import TrainConfig, train
from hurricane.two_stage import data_for, stage_a_config, two_stage
from pipelines.config import Pipeline
from pipelines.steps import Steps, digest, file_sha256
from profilers.campaign import _spec_json, profile, space_instances
from profilers.models import choose_measured

Echo = Callable[[str], None]


def check_reachable(typed: str, budget_ms: float, model: LatencyModel, where: str) -> None:
    """Refuse, before any training, a budget under the fastest architecture the LUT allows
    (the search would find nothing): ``where`` and ``typed`` are the flag or field and the
    value as the user wrote them."""
    fastest, arch = model.fastest()
    if budget_ms < fastest:
        resolved = "" if typed == f"{budget_ms:g}" else f" ({budget_ms:g} ms)"
        raise UserError(
            f"{where} {typed}{resolved}: no architecture fits; the fastest in this space is "
            f"{fastest:.4g} ms on {model.lut.device} ({arch}); give a budget of at least "
            f"{fastest:.4g} ms"
        )


def lut_digest(space: SearchSpace, spec: DeviceSpec, db: str | Path) -> dict[str, Any]:
    """What the space's LUT on this device holds now: a digest and counts by status."""
    keys = {i.key for i in space_instances(space, spec.measure.pairs)}
    with LutDB(db) as lut:
        entries = [e for e in lut.entries(lut.device_id(spec.name)) if e.key in keys]
    rows = sorted((e.key, e.status, e.median_ms) for e in entries)
    counts: dict[str, int] = {}
    for _, status, _ in rows:
        counts[status] = counts.get(status, 0) + 1
    return {"digest": digest(rows), "entries": len(rows), "needed": len(keys), "status": counts}


def profile_device(
    space: SearchSpace,
    spec: DeviceSpec,
    db: str | Path,
    remeasure_noisy: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    report = profile(space, spec, db, progress=progress, remeasure_noisy=remeasure_noisy)
    return {**lut_digest(space, spec, db), "report": report.to_json()}


def shrink_for_device(
    space: SearchSpace,
    spec: DeviceSpec,
    db: str | Path,
    k: int,
    rule: str,
    exclude: list[str],
    out: Path | None = None,
    made_by: str = "",
    skip: str = "identity",
) -> dict[str, Any]:
    """Stage one: the space reduced for ``spec`` from its LUT, written to ``out`` (TOML;
    default ``runs/spaces/SPACE-DEVICE-kK.toml``) with its scores beside it."""
    table, predicted = fill_missing(space, read_table(space, db, spec.name), spec.name)
    exclude = [*spec.exclude_ops, *exclude]
    name = f"{space.name}-{spec.name}-k{k}"
    reduced, scores = reduce_space(
        space, table, k=k, rule=rule, exclude=exclude, name=name, skip=skip
    )
    out = Path(out) if out else child_path("runs/spaces", f"{name}.toml")
    header = (
        f"Stage one for device {spec.name}: top {k} per layer by rule {rule!r}, "
        f"skip={skip}"
        f"{'; excluded ' + ', '.join(exclude) if exclude else ''}.\n{made_by}"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(space_to_toml(reduced, header))
    out.with_suffix(".scores.json").write_text(json.dumps(scores_json(scores), indent=1))
    return {
        "space": str(out),
        "digest": file_sha256(out),
        "kept": [list(lay.ops) for lay in reduced.layers],
        "predicted_entries": len(predicted),
        "log10_size": [round(space.log10_size(), 2), round(reduced.log10_size(), 2)],
    }


def final_model(
    space_ref: str,
    spec: DeviceSpec,
    ranked: list[dict[str, Any]],
    budget_ms: float,
    db: str | Path,
    supernet_pt: Path,
    out: Path,
    verify_top: int,
    final_steps: int,
    data: str,
    seed: int,
    measure: bool = True,
    echo: Echo = print,
    progress: bool = True,
    inherit: bool = True,
    train_on: TrainOn | None = None,
    spec_for: Callable[[dict[str, Any]], DeviceSpec] | None = None,
    hardware: Callable[[str], dict[str, Any]] | None = None,
    adaptive: AdaptiveSettings | None = None,
) -> dict[str, Any]:
    """The device's check of the best candidates, then the chosen one fine-tuned from its
    inherited weights (or, not ``inherit``, trained from scratch) on ``train_on``'s torch
    device and scored on the test split; written to ``out/final.json``. Under torchrun rank
    0 alone measures on the device and writes; every rank trains.

    Co-exploration's candidates are pairs: ``spec_for`` gives each one's configuration (it
    is measured there), and ``hardware`` the chosen configuration's record, kept in
    ``final.json`` with its ready device spec written to ``out/hardware.toml``."""
    space = load_space(space_ref)
    if measure:
        chosen = main_only(
            lambda: choose_measured(
                space,
                spec,
                ranked,
                budget_ms,
                db,
                n=verify_top,
                progress=progress,
                spec_for=spec_for,
            )
        )
        for c in chosen["candidates"]:
            ms = "failed" if c["measured_ms"] is None else f"{c['measured_ms']:.4f} ms"
            echo(
                f"  on {c['measured_on']}: {c['arch']} predicted {c['predicted_ms']:.4f} ms, "
                f"measured {ms}"
            )
        if not chosen["accepted"]:
            print(
                f"WARNING: none of the top {verify_top} measured within {budget_ms:g} ms on "
                f"{spec.name}; keeping the fastest, marked not accepted",
                file=sys.stderr,
            )
    else:
        c = ranked[0]
        chosen = {
            **c,
            "predicted_ms": c["latency_ms"],
            "measured_ms": None,
            "accepted": None,
            "candidates": [],
        }
    final = {**chosen, "budget_ms": budget_ms, "device": spec.name, "space": space_ref}
    if hardware is not None and chosen.get("config"):
        record = hardware(chosen["config"])
        final["hardware"] = {k: v for k, v in record.items() if k != "spec_toml"}
        final["device"] = spec_for(chosen).name if spec_for else spec.name
        if is_main():
            out.mkdir(parents=True, exist_ok=True)
            (out / "hardware.toml").write_text(record["spec_toml"])
            final["hardware"]["file"] = str(out / "hardware.toml")
    if final_steps > 0 and adaptive is not None:
        adaptive = _golden_or_plain(space, chosen["arch"], adaptive, echo)
    if final_steps > 0:
        trained = train_final(
            space_ref,
            chosen["arch"],
            out / "final",
            final_steps,
            data=data,
            init=supernet_pt if inherit else None,
            seed=seed,
            progress=progress,
            train_on=train_on,
            adaptive=adaptive,
        )
        final.update(trained)
        how = "fine-tuned" if inherit else "trained from scratch"
        echo(
            f"final model: {chosen['arch']} {how} {trained['steps']} steps: test "
            f"accuracy {trained['test_acc']:.4f} on {trained['test_images']} images; "
            f"{trained['model']}"
        )
        for d in trained.get("depths", [])[1:]:
            echo(
                f"  GoldenNet depth {d['name']} ({d['blocks']} blocks): test accuracy "
                f"{d['test_acc']:.4f}"
            )
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
        (out / "final.json").write_text(json.dumps(final, indent=1))
    return final


class PipelineRun:
    """One pipeline's steps over its devices and budgets."""

    def __init__(
        self, p: Pipeline, echo: Echo = print, progress: bool = True, require_measured: bool = False
    ) -> None:
        self.p, self.echo, self.progress = p, echo, progress
        self.require_measured = require_measured  # refuse a LUT the op predictor mostly fills
        self.root = Path(p.out)
        self.steps = Steps(self.root, echo)
        self.space = load_space(p.space)
        self.results: dict[str, dict[str, Any]] = {}
        # Devices whose searches co-explore their deployment configurations.
        self.deployments = p.coexplore.spaces()

    def budgets_ms(self, device: str) -> dict[str, float]:
        """Each budget in milliseconds on ``device`` (label -> ms): a percentile is of the
        pipeline's space as written, before stage one (``hurricane.budgets``)."""
        fixed = {b.label: b.ms for b in self.p.budgets if b.ms is not None}
        if len(fixed) == len(self.p.budgets):  # milliseconds only: no LUT needed
            return fixed
        model = LatencyModel.from_db(self.space, self.p.db, device)
        return {b.label: b.resolve(model.predict, self.space, self.p.seed) for b in self.p.budgets}

    def device_steps(self, device_ref: str, handoff: bool) -> dict[str, Any]:
        p, g = self.p, self.p.generate
        spec = load_device(device_ref)
        dev = spec.name
        base = child_path(self.root, dev)
        spec_digest = digest(_spec_json(spec))
        prof = self.steps.run(
            f"profile-{dev}",
            {
                "space": self.space.structure_hash(),
                "ops": [list(lay.ops) for lay in self.space.layers],
                "device": spec_digest,
                "db": str(Path(p.db).resolve()),
                "remeasure_noisy": p.profile_remeasure_noisy,
            },
            lambda: profile_device(
                self.space, spec, p.db, p.profile_remeasure_noisy, self.progress
            ),
            intact=lambda o: _lut_unchanged(self.space, spec, p.db, o),
        )
        if p.validate_models:
            val = self.steps.run(
                f"validate-{dev}",
                {
                    "lut": prof["digest"],
                    "n": p.validate_models,
                    "calibration": p.calibration_models,
                    "seed": p.seed,
                },
                lambda: self._validate(spec),
                workdir=base / "latency",
            )
            prof = {**prof, "digest": digest([prof["digest"], val["digest"]])}
        dep = self.deployments.get(dev)
        if dep is not None:
            confs = self.steps.run(
                f"configurations-{dev}",
                {
                    "space": self.space.structure_hash(),
                    "ops": [list(lay.ops) for lay in self.space.layers],
                    "configurations": [digest(_spec_json(c)) for _, c in dep.configurations()],
                    "db": str(Path(p.db).resolve()),
                },
                lambda: self._configurations(dep),
                intact=lambda o: all(
                    _lut_unchanged(self.space, c, p.db, o["luts"][c.name])
                    for _, c in dep.configurations()
                ),
            )
            prof = {**prof, "digest": digest([prof["digest"], confs["digest"]])}
        note = predicted_note(self.space, p.db, dev, device_ref, self.require_measured)
        if note:
            print(f"hurricane: {note}", file=sys.stderr)
        if g.k > 0:
            shr = self.steps.run(
                f"shrink-{dev}",
                {
                    "lut": prof["digest"],
                    "k": g.k,
                    "rule": g.rule,
                    "exclude": list(g.exclude_ops),
                    "device_exclude": list(spec.exclude_ops),
                    "skip": g.skip,
                },
                lambda: shrink_for_device(
                    self.space,
                    spec,
                    p.db,
                    g.k,
                    g.rule,
                    list(g.exclude_ops),
                    base / "shrink" / "space.toml",
                    f"Made by pipeline {p.name} ({p.source})",
                    g.skip,
                ),
                intact=lambda o: _same_file(o["space"], o["digest"]),
            )
            space_file = shr["space"]
        else:
            shr = {"digest": digest(self.space.summary()), "kept": None}
            space_file = p.space
        space = load_space(space_file)
        split = default_split(space, g.split)
        cfg = g.train_config(space_file, p.data, base / "supernet", p.seed, self.progress, p.train)
        model = LatencyModel.from_db(space, p.db, dev)
        budgets = self.budgets_ms(dev)
        reach = model
        if dep is not None:  # a pair may run on any configuration: the fastest one decides
            models = [LatencyModel.from_db(space, p.db, c.name) for _, c in dep.configurations()]
            reach = min(models, key=lambda m: m.fastest()[0])
        for b in p.budgets:
            typed = f"{b.ms:g}" if b.ms is not None else f"{b.percentile:g}%"
            check_reachable(typed, budgets[b.label], reach, p.budgets_field)
        fixed = stage_a_base(model, split, min(budgets.values())) if g.two_stage else None

        def train_supernet() -> dict[str, Any]:
            if g.two_stage:
                summary = train(
                    stage_a_config(cfg, space, split, g.steps, base / "supernet", fixed)
                )
            else:
                summary = train(replace(cfg, sample_layers=None, fixed=None))
            return {
                "digest": summary["state_sha256"],
                "steps": summary["steps"],
                "seconds": summary["train_seconds"],
                "fixed": str(fixed) if fixed else None,
                "supernet": str(base / "supernet" / "supernet.pt"),
            }

        train_inputs = {
            "space": shr["digest"],
            "train": cfg.identity(),
            "two_stage": g.two_stage,
            "split": split if g.two_stage else None,
            "fixed": str(fixed) if fixed else None,
        }
        sup = self.steps.run(
            f"supernet-{dev}",
            train_inputs,
            train_supernet,
            workdir=base / "supernet",
            intact=lambda o: Path(o["supernet"]).is_file(),
        )
        out: dict[str, Any] = {
            "device": dev,
            "spec": spec,
            "profile": prof,
            "shrink": shr,
            "supernet": sup,
            "space_file": space_file,
            "budgets": {},
        }
        for budget in p.budgets:
            out["budgets"][budget.label] = self.budget_steps(
                spec,
                space,
                space_file,
                model,
                budget,
                budgets[budget.label],
                cfg,
                split,
                fixed,
                prof,
                sup,
                handoff,
            )
        return out

    def budget_steps(
        self,
        spec,
        space,
        space_file,
        model,
        budget,
        budget_ms,
        cfg,
        split,
        fixed,
        prof,
        sup,
        handoff,
    ) -> dict[str, Any]:
        p, g = self.p, self.p.generate
        dev, label = spec.name, budget.label
        work = child_path(self.root, dev, label)
        scfg = g.search_config(budget_ms, p.seed)
        steps_b = g.steps_b or g.steps

        dep = self.deployments.get(dev)

        def search() -> dict[str, Any]:
            if dep is not None:
                res = self._coexplore(dep, space, cfg, sup, budget_ms, scfg, work / "coexplore")
                top, pt = res["top"], Path(sup["supernet"])
            elif g.two_stage:
                res = two_stage(
                    cfg,
                    split,
                    model.predict,
                    scfg,
                    work,
                    g.steps,
                    steps_b,
                    fixed=fixed,
                    min_latency=model.fastest,
                    stage_a_out=self.root / dev / "supernet",
                )
                top, pt = res["stage_b"]["top"], work / "stage_b" / "supernet.pt"
            else:
                res = EvolutionSearch(
                    space,
                    model.predict,
                    _fitness(cfg, space, sup),
                    scfg,
                    work / "search",
                    min_latency=model.fastest,
                ).run()
                res = {
                    "arch": res["best"],
                    "fitness": res["fitness"],
                    "latency_ms": res["latency_ms"],
                    "supernet_steps": sup["steps"],
                    "supernet_seconds": sup["seconds"],
                    "search": res,
                }
                top, pt = res["search"]["top"], Path(sup["supernet"])
            on = f"{dev} (configuration {res['config']})" if dep is not None else dev
            self.echo(
                f"  best for {label} on {on}: {res['arch']} validation accuracy "
                f"{res['fitness']:.4f}, predicted {res['latency_ms']:.4f} ms "
                f"(budget {budget_ms:g} ms); supernet cost {res['supernet_steps']} "
                f"steps, {res['supernet_seconds']:.0f}s"
            )
            return {
                "digest": digest([res["arch"], top]),
                "arch": res["arch"],
                "fitness": res["fitness"],
                "latency_ms": res["latency_ms"],
                "top": top,
                "supernet_pt": str(pt),
                "budget_ms": budget_ms,
                "supernet_steps": res["supernet_steps"],
                "supernet_seconds": res["supernet_seconds"],
                **({"coexplore": res["coexplore"]} if dep is not None else {}),
            }

        srch = self.steps.run(
            f"search-{dev}-{label}",
            {
                "supernet": sup["digest"],
                "lut": prof["digest"],
                "budget_ms": budget_ms,
                "search": scfg.identity(),
                "steps_b": steps_b if g.two_stage else None,
                "train": {k: v for k, v in cfg.identity().items() if k != "out"},
                "coexplore": self._coexplore_identity(dep),
            },
            search,
            workdir=work,
            intact=lambda o: Path(o["supernet_pt"]).is_file(),
        )
        fin = self.steps.run(
            f"final-{dev}-{label}",
            {
                "search": srch["digest"],
                "verify_top": g.verify_top,
                "final_steps": g.final_steps,
                "final_from": g.final_from,
                "measure": g.measure_candidates,
                "data": p.data,
                "seed": p.seed,
                **({"adaptive": asdict(p.adaptive)} if p.adaptive else {}),
            },
            lambda: _final_outputs(
                final_model(
                    space_file,
                    spec,
                    srch["top"],
                    budget_ms,
                    p.db,
                    Path(srch["supernet_pt"]),
                    work,
                    g.verify_top,
                    g.final_steps,
                    p.data,
                    p.seed,
                    g.measure_candidates,
                    self.echo,
                    self.progress,
                    g.final_from == "inherited",
                    p.train,
                    spec_for=self._spec_for(dep),
                    hardware=self._hardware(dep),
                    adaptive=p.adaptive,
                )
            ),
            workdir=work / "final",
            intact=_final_intact,
        )
        res = {"budget": label, "budget_ms": budget_ms, "search": srch, "final": fin}
        if handoff and p.handoff and fin.get("model"):
            pick = self._spec_for(dep)
            on = pick(fin) if pick is not None else spec
            res["handoff"] = self.steps.run(
                f"handoff-{dev}-{label}",
                {
                    "final": fin["digest"],
                    "device": digest(_spec_json(on)),
                    "samples": p.handoff_samples,
                    "seed": p.seed,
                },
                lambda: self._handoff(on, space_file, fin, budget_ms, label, spec.name),
                intact=_bundle_intact,
            )
        return res

    def _configurations(self, dep) -> dict[str, Any]:
        """Every deployment configuration of ``dep``'s device profiled into its own table."""
        from profilers.configurations import profile_configurations

        profile_configurations(self.space, dep, self.p.db, progress=self.progress)
        luts = {c.name: lut_digest(self.space, c, self.p.db) for _, c in dep.configurations()}
        return {"digest": digest({k: v["digest"] for k, v in luts.items()}), "luts": luts}

    def _coexplore_identity(self, dep) -> dict[str, Any] | None:
        if dep is None:
            return None
        c = self.p.coexplore
        names = [cfg.name for cfg, _ in dep.configurations()]
        return {"configurations": names, "strategy": c.strategy, "tune": c.tune, "a": c.a}

    def _coexplore(self, dep, space, cfg, sup, budget_ms, scfg, out: Path) -> dict[str, Any]:
        """The search of (architecture, configuration) pairs on ``dep``'s device; its best
        pairs ranked, each with the configuration fast exploration tuned for it."""
        from hurricane.coexplore import STRATEGIES, FastExplorer, fronts

        c = self.p.coexplore
        pairs = dep.configurations()
        tables = {h.name: LatencyModel.from_db(space, self.p.db, h.name).predict for h, _ in pairs}
        explorer = FastExplorer([h for h, _ in pairs], tables, budget_ms, rule=c.tune)
        found = STRATEGIES[c.strategy](
            space, explorer, _fitness(cfg, space, sup), scfg, out / c.strategy, a=c.a
        )
        if found is None:
            raise UserError(
                f"co-exploration on {dep.device.name}: no pair within {budget_ms:g} ms; "
                "raise the budget or [generate] population/generations"
            )
        ranked = [{"arch": found.arch, "fitness": found.fitness}]
        ranked += [t for t in found.top if t["arch"] != found.arch]
        top = []
        for t, tuned in zip(ranked, explorer.tune([space.parse_arch(r["arch"]) for r in ranked])):
            if tuned.feasible:
                top.append({**t, "latency_ms": tuned.latency_ms, "config": tuned.config})
        best = top[0]
        own = dep.own_config()
        pairs_front = fronts(space, explorer, own, found.evaluated)
        self.echo(
            f"  co-exploration ({c.strategy}, {found.evaluations} evaluated, "
            f"{found.pair_pruned_share:.0%} of the pairs pruned before evaluation)"
        )
        return {
            "arch": best["arch"],
            "fitness": best["fitness"],
            "latency_ms": best["latency_ms"],
            "config": best["config"],
            "top": top,
            "supernet_steps": sup["steps"],
            "supernet_seconds": sup["seconds"],
            "coexplore": {
                "space": dep.name,
                "strategy": c.strategy,
                "tune": c.tune,
                "evaluations": found.evaluations,
                "pruned_share": found.pair_pruned_share,
                "pruned_archs_share": found.pruned_share,
                "search_seconds": round(found.seconds, 1),
                "configurations": len(pairs),
                "default": own,
                "pairs": pairs_front,
            },
        }

    def _spec_for(self, dep) -> Callable[[dict[str, Any]], DeviceSpec] | None:
        """The device spec of a candidate's configuration (None: the device's own)."""
        if dep is None:
            return None
        specs = {h.name: spec for h, spec in dep.configurations()}
        return lambda c: specs[c["config"]]

    def _hardware(self, dep) -> Callable[[str], dict[str, Any]] | None:
        """The hardware half of a chosen pair, as the final step records it: the space, the
        configuration and its knobs, and a ready device spec's text."""
        if dep is None:
            return None
        from devices.deployment import spec_toml

        knobs = {
            h.name: {k: v for k, v in h.knobs.items() if k != "device"}
            for h, _ in dep.configurations()
        }
        return lambda name: {
            "space": dep.name,
            "source": dep.source,
            "config": name,
            "knobs": knobs[name],
            "spec_toml": spec_toml(dep, knobs[name]),
        }

    def _validate(self, spec: DeviceSpec) -> dict[str, Any]:
        """Whole random models timed on the device: the calibration the search then uses,
        and the figures of how far the latency model can be trusted."""
        from pipelines.latency_validate import summary_lines, validate_latency

        p = self.p
        res = validate_latency(
            self.space,
            spec,
            p.db,
            p.validate_models,
            p.calibration_models,
            p.seed,
            child_path(self.root, spec.name, "latency"),
            progress=self.progress,
        )
        for line in summary_lines(res):
            self.echo(f"  {line}")
        keys = ("within_5pct", "within_10pct", "mape", "rmse_ms", "spearman", "calibration")
        return {"digest": digest(res["calibration"]), **{k: res[k] for k in keys}}

    def _handoff(self, spec, space_file, fin, budget_ms, label, dev=None) -> dict[str, Any]:
        """Bundle the final model for ``spec``: the device's own, or a co-explored pair's
        configuration of device ``dev`` (the bundle keeps the device's name)."""
        from pipelines.handoff import hardware_of, make_bundle

        out = child_path(self.root, "bundles", f"{dev or spec.name}-{label}")
        acc = {
            "test_acc": fin.get("test_acc"),
            "test_images": fin.get("test_images"),
            "val_acc": fin.get("fitness"),
            "fine_tune_steps": fin.get("steps"),
        }
        m = make_bundle(
            space_file,
            fin["model"],
            spec,
            out,
            budget_ms,
            fin.get("predicted_ms"),
            acc,
            self.p.data,
            self.p.handoff_samples,
            self.p.seed,
            extra={
                "pipeline": {"name": self.p.name, "source": self.p.source},
                "provenance": provenance(),
            },
            db=self.p.db,
            hardware=hardware_of(fin),
            golden=fin.get("adaptive"),
            depth_accuracy={d["name"]: d["test_acc"] for d in fin.get("depths", [])},
        )
        ms = m["latency"]["measured_ms"]
        if m["accepted"]:
            self.echo(
                f"  bundle {out}: accepted, {ms:.4f} ms on {spec.name} (budget "
                f"{budget_ms:g} ms), outputs match PyTorch"
            )
        else:
            print(
                f"WARNING: bundle {out} is NOT ACCEPTED: {'; '.join(m['reasons'])}", file=sys.stderr
            )
        return {
            "digest": file_sha256(out / "manifest.json"),
            "bundle": str(out),
            "accepted": m["accepted"],
            "measured_ms": ms,
            "reasons": m["reasons"],
        }

    def read_back(self) -> dict[str, dict[str, Any]]:
        """What the run's finished steps recorded, in the shape ``run`` returns, without
        running anything: what ``hurricane report`` draws. A budget whose final step never
        finished is left out."""
        for ref in self.p.devices:
            spec = load_device(ref)
            dev = spec.name
            budgets = {}
            for b in self.p.budgets:
                fin = self.steps.record(f"final-{dev}-{b.label}")
                if fin is None:
                    continue
                hand = self.steps.record(f"handoff-{dev}-{b.label}")
                res = {"budget": b.label, "budget_ms": fin["outputs"]["budget_ms"]}
                res["final"] = fin["outputs"]
                if hand is not None:
                    res["handoff"] = hand["outputs"]
                budgets[b.label] = res
            shr = self.steps.record(f"shrink-{dev}")
            self.results[dev] = {
                "device": dev,
                "spec": spec,
                "shrink": shr["outputs"] if shr else {"kept": None},
                "budgets": budgets,
            }
        return self.results

    def report(self) -> str:
        """Write ``RUN/report/index.html`` from what the run holds now; returns its path."""
        from pipelines.run_report import build_report

        if not self.results:
            self.read_back()
        if not any(r["budgets"] for r in self.results.values()):
            raise UserError(
                f"{self.root}: no finished final model to report yet; run the pipeline "
                "(hurricane run) until at least one search and final step are done"
            )
        self.report_path = build_report(self)["index"]
        return self.report_path

    @classmethod
    def of_folder(cls, folder: str | Path, db: str | None = None) -> PipelineRun:
        """The run a ``hurricane run`` or ``generate`` made in ``folder``, from its
        ``pipeline.json`` (``db`` overrides the database it names)."""
        folder = Path(folder)
        path = folder / "pipeline.json"
        if not path.is_file():
            raise UserError(
                f"{folder}: no pipeline.json; give the folder a 'hurricane run' or "
                "'hurricane generate' wrote (its --out)"
            )
        p = Pipeline.from_json(json.loads(path.read_text())["pipeline"])
        return cls(replace(p, out=str(folder), db=db or p.db), echo=lambda _: None)

    def run(self, handoff: bool = True) -> dict[str, Any]:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "pipeline.json").write_text(
            json.dumps({"pipeline": self.p.to_json(), "provenance": provenance()}, indent=1)
        )
        for d in self.p.devices:
            r = self.device_steps(d, handoff)
            self.results[r["device"]] = r
        if self.p.report:
            from pipelines.run_report import build_report

            inputs = {
                d: {
                    b: (r["final"]["digest"], r.get("handoff", {}).get("digest"))
                    for b, r in res["budgets"].items()
                }
                for d, res in self.results.items()
            }
            rep = self.steps.run(
                "report",
                {"results": inputs},
                lambda: build_report(self),
                intact=lambda o: Path(o["index"]).is_file(),
            )
            self.report_path = rep["index"]
        return self.results


def _lut_unchanged(space: SearchSpace, spec: DeviceSpec, db: str, outputs: dict) -> bool:
    try:
        return lut_digest(space, spec, db)["digest"] == outputs["digest"]
    except KeyError:  # the device is not in this database (a new or replaced file)
        return False


def _same_file(path: str | Path, sha256: str) -> bool:
    return Path(path).is_file() and file_sha256(path) == sha256


def _bundle_intact(outputs: dict[str, Any]) -> bool:
    from pipelines.handoff import BundleError, check_files

    try:
        return check_files(outputs["bundle"]) == [] and _same_file(
            Path(outputs["bundle"]) / "manifest.json", outputs["digest"]
        )
    except BundleError:
        return False


def _golden_or_plain(
    space: SearchSpace, arch: str, adaptive: AdaptiveSettings, echo: Echo
) -> AdaptiveSettings | None:
    """The GoldenNet settings if the chosen architecture offers their depths. Named depths
    it cannot offer stop the run (fix them and run again: the search is kept); with a
    number of blocks and nothing to drop, the final model is a plain one."""
    from hurricane.adaptive import DepthError, parse_depths, variants

    depths = parse_depths(adaptive.depths)
    try:
        variants(space, space.parse_arch(arch), depths)
    except DepthError as exc:
        if isinstance(depths, list):
            raise
        echo(f"  no GoldenNet: {str(exc).removeprefix('depths: ')}; a plain final model")
        return None
    return adaptive


def _final_intact(outputs: dict[str, Any]) -> bool:
    """The final step's files are still what it made (its model, and a GoldenNet's depths)."""
    files = [outputs[k] for k in ("model", "adaptive") if outputs.get(k)]
    if not all(Path(f).is_file() for f in files):
        return False
    return not files or _final_outputs(dict(outputs))["digest"] == outputs["digest"]


def _final_outputs(final: dict[str, Any]) -> dict[str, Any]:
    model = final.get("model")
    final["digest"] = file_sha256(model) if model else digest(final)
    if final.get("adaptive"):  # a GoldenNet: its every depth is part of what was made
        final["digest"] = digest([final["digest"], file_sha256(final["adaptive"])])
    return final


def _fitness(cfg: TrainConfig, space: SearchSpace, sup: dict[str, Any]):
    from hurricane.two_stage import fitness_for, load_supernet

    net = load_supernet(space, sup["supernet"])
    return fitness_for(net, data_for(cfg, space), cfg, cfg.seed)
