"""Deployment configurations of a real device: the knobs that change latency, not the network.

A deployment space names a device spec and lists values per knob: ``threads``, ``precision``
(among what the runtime produces), ``xnnpack`` (LiteRT), ``hint`` and ``streams`` (OpenVINO's
performance hint and stream count) and ``affinity`` (CPU sets). Every
combination is a configuration, and each becomes a device spec of its own, named
``DEVICE.CONFIG`` (``local-litert.t2-fp32-xnn1``). So the campaign profiles it as it profiles
any device (one LUT table per (device, configuration), the same engine, resume and progress),
and artifacts that do not depend on the knob (threads, XNNPACK, affinity) are converted once
and shared through the artifact cache.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from devices.runtimes import REGISTRY
from devices.spec import OPENVINO_HINTS, DeviceSpec, builtin_devices, load_device
from hurricane.coexplore import HardwareConfig
from hurricane.tomlcheck import ConfigError, Fields, dumps_toml, read_toml

KNOBS = ("threads", "precision", "xnnpack", "hint", "streams", "affinity")
# Knobs one runtime alone takes: a [runtime] field of that name (devices/runtimes.py).
RUNTIME_KNOBS = ("xnnpack", "hint", "streams")


class DeploymentSpaceError(ConfigError):
    """A bad deployment space file."""


@dataclass(frozen=True)
class DeploymentSpace:
    name: str
    source: str
    device: DeviceSpec
    values: dict[str, tuple[Any, ...]]  # knob -> the values to explore

    def configurations(self) -> list[tuple[HardwareConfig, DeviceSpec]]:
        """Every combination of the knobs' values: its ``HardwareConfig`` (for the search)
        and the device spec that profiles and runs it."""
        out = []
        keys = list(self.values)
        for combo in itertools.product(*(self.values[k] for k in keys)):
            knobs = dict(zip(keys, combo))
            spec = configured(self.device, knobs)
            out.append((HardwareConfig(spec.name, {"device": self.device.name, **knobs}), spec))
        return out

    def own_config(self) -> str:
        """The configuration the device spec itself sets (what a fixed-hardware search runs
        on); the first one when the space does not list those values."""
        rt = self.device.runtime
        own = {k: getattr(rt, k) for k in ("threads", "precision", *RUNTIME_KNOBS)}
        own["affinity"] = tuple(self.device.affinity)
        name = configured(self.device, {k: own[k] for k in self.values}).name
        names = [c.name for c, _ in self.configurations()]
        return name if name in names else names[0]


def config_label(knobs: dict[str, Any]) -> str:
    parts = [f"t{knobs['threads']}", str(knobs["precision"])]
    if "xnnpack" in knobs:
        parts.append(f"xnn{int(knobs['xnnpack'])}")
    if "hint" in knobs:
        parts.append(str(knobs["hint"]).lower().replace("_", ""))
    if "streams" in knobs:
        parts.append(f"s{knobs['streams']}")
    if knobs.get("affinity"):
        parts.append("cpu" + "_".join(map(str, knobs["affinity"])))
    return "-".join(parts)


def configured(device: DeviceSpec, knobs: dict[str, Any]) -> DeviceSpec:
    """``device`` under one configuration, named for it."""
    rt = device.runtime
    runtime = replace(
        rt,
        threads=knobs.get("threads", rt.threads),
        precision=knobs.get("precision", rt.precision),
        xnnpack=knobs.get("xnnpack", rt.xnnpack),
        hint=knobs.get("hint", rt.hint),
        streams=knobs.get("streams", rt.streams),
    )
    affinity = tuple(knobs.get("affinity", device.affinity))
    return replace(
        device,
        name=f"{device.name}.{config_label(knobs)}",
        runtime=runtime,
        affinity=affinity,
        description=f"{device.description or device.name}, configuration {config_label(knobs)}",
    )


def load_deployment_space(path: str | Path, device_ref: str | None = None) -> DeploymentSpace:
    """The space in ``path``; ``device_ref`` (a spec file or built-in name) stands in for
    its ``device`` field, so one list of knobs serves several devices."""
    source = str(path)
    data = read_toml(Path(path), "deployment space")
    top = Fields(data, source, error_type=DeploymentSpaceError)
    top.only({"name", "kind", "description", "device", *KNOBS})
    if top.str("kind", "deployment") != "deployment":
        raise top.error("kind", 'a deployment space has kind = "deployment"')
    if device_ref is not None:
        device = load_device(device_ref)
    else:
        ref = top.str("device")
        local = Path(path).parent / ref
        device = load_device(local if local.exists() or ref not in builtin_devices() else ref)
    rt, entry = device.runtime, device.runtime.entry
    cores = (os.cpu_count() or 1) if device.is_local else None
    values: dict[str, tuple[Any, ...]] = {}

    threads = _list(top, "threads", [rt.threads])
    for t in threads:
        if not isinstance(t, int) or isinstance(t, bool) or t < 1:
            raise top.error("threads", f"each is a thread count (1 or more), got {t!r}")
        if cores is not None and t > cores:
            raise top.error(
                "threads", f"{t} is more than this machine's {cores} cores ({device.name})"
            )
    values["threads"] = tuple(threads)
    precisions = _list(top, "precision", [rt.precision])
    for p in precisions:
        if p not in entry.precisions:
            raise top.error(
                "precision",
                f"{p!r}: {entry.label} offers {', '.join(entry.precisions)} ({device.name})",
            )
    values["precision"] = tuple(precisions)
    for knob in RUNTIME_KNOBS:
        if not top.has(knob):
            continue
        if knob not in entry.fields:
            takes = " and ".join(r.label for r in REGISTRY.values() if knob in r.fields)
            raise top.error(knob, f"only {takes} takes this; {device.name} runs {rt.name}")
        values[knob] = tuple(_runtime_knob(top, knob, cores, device.name))
    if top.has("affinity"):
        sets = _list(top, "affinity", [])
        for s in sets:
            ok = isinstance(s, list) and s and all(isinstance(c, int) and c >= 0 for c in s)
            if not ok:
                raise top.error("affinity", f"each is a list of CPU numbers, got {s!r}")
            if cores is not None and max(s) >= cores:
                raise top.error(
                    "affinity", f"CPU {max(s)} does not exist here (cores 0..{cores - 1})"
                )
        values["affinity"] = tuple(tuple(s) for s in sets)
    name = top.str("name", Path(path).stem)
    return DeploymentSpace(name, source, device, values)


def _runtime_knob(top: Fields, knob: str, cores: int | None, device: str) -> list[Any]:
    values = _list(top, knob, [])
    if knob == "xnnpack" and any(not isinstance(v, bool) for v in values):
        raise top.error(knob, f"expected a list of true/false, got {values!r}")
    if knob == "hint":
        bad = [v for v in values if v not in OPENVINO_HINTS]
        if bad:
            raise top.error(knob, f"{bad[0]!r}: OpenVINO's hints are {', '.join(OPENVINO_HINTS)}")
    if knob == "streams":
        for v in values:
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise top.error(knob, f"each is a stream count (1 or more), got {v!r}")
            if cores is not None and v > cores:
                raise top.error(knob, f"{v} streams is more than this machine's {cores} cores")
    return values


def _list(top: Fields, key: str, default: list[Any]) -> list[Any]:
    value = top.table.get(key, default)
    if not isinstance(value, list) or not value:
        raise top.error(key, f"expected a non-empty list of values, got {value!r}")
    return value


def spec_toml(space: DeploymentSpace, knobs: dict[str, Any]) -> str:
    """A ready device spec for one configuration: the device's own spec file with the
    knobs set, loadable by ``load_device`` and ``--device``."""
    device = space.device
    path = Path(device.source)
    if not path.is_file():  # a shipped example, named
        path = Path(str(resources.files("devices") / "examples" / device.source))
    data = read_toml(path, "device spec")
    spec = configured(device, knobs)
    data["name"] = spec.name
    data["description"] = spec.description
    runtime = data.setdefault("runtime", {})
    runtime["threads"], runtime["precision"] = spec.runtime.threads, spec.runtime.precision
    for knob in RUNTIME_KNOBS:
        if knob in knobs:
            runtime[knob] = getattr(spec.runtime, knob)
    if spec.affinity:
        data["affinity"] = list(spec.affinity)
    head = f"{spec.name}: configuration {config_label(knobs)} of {device.name} ({space.source})"
    return dumps_toml(data, head + "\nchosen by hurricane coexplore")
