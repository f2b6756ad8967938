#!/usr/bin/env python3
"""Hurricane depth selector: runs a depth-adaptive network on the device within a latency budget.

Shipped inside a bundle as this one file, beside the bundle's depth variants; it runs with the
device's Python (>= 3.8), the standard library, numpy and one runtime (ai_edge_litert or
tflite_runtime, openvino, onnxruntime). It reads ``manifest.json``'s ``runtime`` and
``adaptive.depths`` (deepest first, each ``{"name", "file", "measured_ms"}``), loads every
variant up front so a switch costs nothing, and times every inference.

Switching rule (``Selector.decide``): latencies of the current variant fill a window of
``window`` inferences; when it is full, ``recent`` = its median, the window starts again, and
``slowdown = recent / current.measured_ms`` predicts any variant v at ``slowdown * v.measured_ms``
(whatever slows the device now, other work or heat, slows every variant alike).

- down: ``recent > budget``: switch to the deepest shallower variant predicted within the budget
  (the shallowest if none is); on the shallowest already, stay.
- up: some deeper variant predicted within ``up_margin * budget`` in ``up_patience`` consecutive
  full windows: switch to the deepest one that fits in the last of them.

Windows are disjoint blocks, so the patience is ``up_patience * window`` fresh samples; after a
switch the window and the up streak start empty, so the new variant's own latencies decide next.
``up_margin < 1`` and the patience are the hysteresis: a variant running just under the budget
predicts any deeper one above ``up_margin * budget``, so it stays where it is.

    python3 selector.py BUNDLE --budget-ms X [--runs N | --seconds S] [--seed 0]

prints one JSON line per switch and a summary line; a bad bundle is one line on stderr, exit 2.
"""

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np  # comes with every runtime

SETTINGS = {  # what the on-device agent was told for the timing; anything else is refused
    "litert": ("xnnpack", "delegate"),
    "openvino": ("device", "precision_hint", "performance_hint", "streams", "config"),
    "onnxruntime": ("providers",),
}
RUNTIMES = tuple(SETTINGS)
OV_KEYS = {"threads": "INFERENCE_NUM_THREADS", "precision_hint": "INFERENCE_PRECISION_HINT"}
OV_KEYS.update(streams="NUM_STREAMS")
ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int8)": "int8"}
ORT_DTYPES.update({"tensor(uint8)": "uint8", "tensor(int32)": "int32", "tensor(int64)": "int64"})


class SelectorError(Exception):
    """A problem with the bundle or its runtime; its message is the one line the user sees."""


class Variant(NamedTuple):
    name: str
    path: str
    measured_ms: float


class _Model(NamedTuple):
    run: Callable[[Any], Any]  # one input array -> the first output, as a fresh array
    shape: Tuple[int, ...]
    dtype: str
    keep: tuple  # what must outlive `run` (a delegate after its interpreter)


def _line(exc: BaseException) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:300]


def _static(dims: list, what: str) -> Tuple[int, ...]:
    """A dynamic batch dimension becomes 1; any other dynamic dimension is an export mistake."""
    shape = [d if isinstance(d, int) and d >= 0 else -1 for d in dims]
    shape[:1] = [1] if shape[:1] == [-1] else shape[:1]
    if -1 in shape:
        raise SelectorError(f"{what}: input shape {dims} is dynamic; export it with a static shape")
    return tuple(shape)


def _load_litert(path: str, threads: Optional[int], settings: dict) -> _Model:
    try:
        module = __import__("ai_edge_litert.interpreter", fromlist=["Interpreter"])
    except ImportError:  # the older package; a clear error if neither is there
        module = __import__("tflite_runtime.interpreter", fromlist=["Interpreter"])
    kwargs: Dict[str, Any] = {"model_path": path, "num_threads": threads}
    if settings.get("xnnpack", True) is False:
        resolver = module.OpResolverType  # builtin kernels only, as the agent timed them
        kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    delegate = None
    spec = settings.get("delegate")
    if spec:
        options = {str(k): str(v) for k, v in (spec.get("options") or {}).items()}
        try:
            delegate = module.load_delegate(spec["library"], options)
            kwargs["experimental_delegates"] = [delegate]
        except Exception as exc:
            if not spec.get("allow_cpu_fallback"):
                raise SelectorError(f"delegate {spec.get('library')}: {_line(exc)}") from None
    interpreter = module.Interpreter(**kwargs)
    interpreter.allocate_tensors()
    ins, outs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(ins) != 1:
        raise SelectorError(f"{path}: has {len(ins)} inputs; the selector feeds one")
    inp, out = ins[0], outs[0]
    in_q, out_q = inp.get("quantization", (0.0, 0)), out.get("quantization", (0.0, 0))
    dtype = np.dtype(inp["dtype"])

    def run(x: Any) -> Any:
        if dtype.kind in "iu" and in_q[0] and np.asarray(x).dtype.kind == "f":
            info = np.iinfo(dtype)
            x = np.clip(np.round(np.asarray(x) / in_q[0]) + in_q[1], info.min, info.max)
        interpreter.set_tensor(inp["index"], np.ascontiguousarray(x, dtype=dtype))
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])
        return (y.astype(np.float32) - out_q[1]) * out_q[0] if out_q[0] else y

    shape = _static([int(d) for d in inp.get("shape_signature", inp["shape"])], path)
    return _Model(run, shape, str(dtype), (interpreter, delegate))


def _load_onnxruntime(path: str, threads: Optional[int], settings: dict) -> _Model:
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    providers = [tuple(p) if isinstance(p, list) else p for p in settings.get("providers") or []]
    session = ort.InferenceSession(
        path, sess_options=so, providers=providers or ["CPUExecutionProvider"]
    )
    ins = session.get_inputs()
    if len(ins) != 1 or ins[0].type not in ORT_DTYPES:
        types = ", ".join(i.type for i in ins)
        raise SelectorError(f"{path}: has inputs of {types}; the selector feeds one numeric input")
    name, out, shape = ins[0].name, session.get_outputs()[0].name, _static(ins[0].shape, path)
    run = lambda x: session.run([out], {name: x})[0]  # noqa: E731
    return _Model(run, shape, ORT_DTYPES[ins[0].type], (session,))


def _load_openvino(path: str, threads: Optional[int], settings: dict) -> _Model:
    import openvino as ov

    core = (getattr(ov, "Core", None) or __import__("openvino.runtime", fromlist=["Core"]).Core)()
    device = settings.get("device") or "CPU"
    model = core.read_model(path)
    if len(model.inputs) != 1:
        raise SelectorError(f"{path}: has {len(model.inputs)} inputs; the selector feeds one")
    ps = model.inputs[0].get_partial_shape()
    if ps.is_dynamic:
        model.reshape(list(_static([d.get_length() if d.is_static else -1 for d in ps], path)))
    config = {"PERFORMANCE_HINT": str(settings.get("performance_hint") or "LATENCY")}
    given = dict(settings, threads=threads)
    config.update({OV_KEYS[k]: str(v) for k, v in given.items() if k in OV_KEYS and v is not None})
    try:  # the agent leaves out what the device does not know; so must the selector
        supported = set(core.get_property(device, "SUPPORTED_PROPERTIES"))
        config = {k: v for k, v in config.items() if k in supported}
    except Exception:
        pass
    config.update({str(k): str(v) for k, v in (settings.get("config") or {}).items()})
    request = core.compile_model(model, device, config).create_infer_request()
    tensor = request.get_input_tensor(0)

    def run(x: Any) -> Any:
        request.infer({0: x})
        return request.get_output_tensor(0).data.copy()

    return _Model(run, tuple(int(d) for d in tensor.shape), str(tensor.data.dtype), (request,))


LOADERS = {"litert": _load_litert, "openvino": _load_openvino, "onnxruntime": _load_onnxruntime}


class Selector:
    """Runs one of `variants` (deepest first) per inference and switches by `decide`.

    `current` is the variant's name, `last_ms` the last inference's time, `count` the
    inferences run; each of `switches` is {"at": inferences run before it, "from", "to",
    "recent_ms": the window median that decided it, "reason": "down" or "up"}."""

    def __init__(
        self,
        variants: List[Variant],
        budget_ms: float,
        runtime: str = "litert",
        threads: Optional[int] = None,
        window: int = 8,
        up_margin: float = 0.85,
        up_patience: int = 3,
        clock: Callable[[], float] = time.perf_counter,
        settings: Optional[dict] = None,
    ) -> None:
        if runtime not in LOADERS or not variants or min(v.measured_ms for v in variants) <= 0:
            raise SelectorError(f"need variants measured > 0 ms and a runtime of {RUNTIMES}")
        if not budget_ms > 0 or window < 1 or up_patience < 1 or not 0 < up_margin <= 1:
            raise SelectorError("need budget_ms > 0, window, up_patience >= 1, 0 < up_margin <= 1")
        self.variants, self.budget_ms, self.window = list(variants), budget_ms, window
        self.up_margin, self.up_patience, self.clock = up_margin, up_patience, clock
        self.models: List[_Model] = []
        for v in self.variants:  # all up front, each run twice: no load or first-call cost later
            try:
                model = LOADERS[runtime](v.path, threads, dict(settings or {}))
            except Exception as exc:
                raise SelectorError(
                    f"depth {v.name!r}: cannot load {v.path} ({_line(exc)})"
                ) from None
            if self.models and model[1:3] != self.models[0][1:3]:
                raise SelectorError(f"depth {v.name!r}: input {model[1:3]} unlike the others'")
            for _ in range(2):
                model.run(np.zeros(model.shape, dtype=model.dtype))
            self.models.append(model)
        self.input_shape, self.input_dtype = self.models[0].shape, self.models[0].dtype
        self.index, self.count, self.last_ms, self._streak = 0, 0, 0.0, 0
        self.switches: List[dict] = []
        self._window: List[float] = []

    @classmethod
    def from_bundle(cls, path: str, budget_ms: float, **kw: Any) -> "Selector":
        runtime, threads, settings, variants = read_manifest(path)
        kw = {"runtime": runtime, "threads": threads, "settings": settings, **kw}
        return cls(variants, budget_ms, **kw)

    @property
    def current(self) -> str:
        return self.variants[self.index].name

    def infer(self, x: Any) -> Any:
        """Run the current variant on `x`, time it, and switch if a full window says so."""
        run = self.models[self.index].run
        start = self.clock()
        y = run(x)
        self.last_ms = (self.clock() - start) * 1000.0
        self.count += 1
        self._window.append(self.last_ms)
        if len(self._window) >= self.window:
            recent, self._window = statistics.median(self._window), []
            move = self.decide(recent)
            if move is not None and move[0] != self.index:
                switch = {"at": self.count, "from": self.current, "to": self.variants[move[0]].name}
                self.switches.append({**switch, "recent_ms": recent, "reason": move[1]})
                self.index, self._streak = move[0], 0
        return y

    def decide(self, recent_ms: float) -> Optional[Tuple[int, str]]:
        """The switching rule of the module docstring: (variant index, "down"/"up") or None."""
        i, vs = self.index, self.variants
        slowdown = recent_ms / vs[i].measured_ms
        if recent_ms > self.budget_ms:
            self._streak = 0
            budget = self.budget_ms
            fits = [j for j in range(i + 1, len(vs)) if slowdown * vs[j].measured_ms <= budget]
            return (fits[0] if fits else len(vs) - 1, "down") if i < len(vs) - 1 else None
        limit = self.up_margin * self.budget_ms
        deeper = [j for j in range(i) if slowdown * vs[j].measured_ms <= limit]
        self._streak = self._streak + 1 if deeper else 0
        return (deeper[0], "up") if deeper and self._streak >= self.up_patience else None


def _field(obj: Any, key: str, kind: Any, where: str, path: str) -> Any:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        what = {dict: "an object", str: "a string", list: "a list"}.get(kind, "a number")
        raise SelectorError(f"{path}: {where}{key} is missing or not {what}")
    return value


def read_manifest(bundle: str) -> Tuple[str, Optional[int], dict, List[Variant]]:
    """(runtime, threads, settings, variants) from a bundle; a bad field is one SelectorError."""
    path = os.path.join(bundle, "manifest.json")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise SelectorError(f"{path}: not a readable manifest ({_line(exc)})") from None
    rt = _field(manifest, "runtime", dict, "", path)
    name = _field(rt, "name", str, "runtime.", path)
    settings = dict(_field(rt, "settings", dict, "runtime.", path) if "settings" in rt else {})
    threads = rt["threads"] if "threads" in rt else settings.get("threads")
    if name not in RUNTIMES:
        raise SelectorError(f"{path}: runtime.name {name!r} is not one of {', '.join(RUNTIMES)}")
    unknown = ", ".join(sorted(set(settings) - set(SETTINGS[name]) - {"threads", "seed"}))
    if unknown:
        raise SelectorError(f"{path}: runtime.settings {unknown}: unknown to the {name} selector")
    if threads is not None and (type(threads) is not int or threads < 1):
        raise SelectorError(f"{path}: runtime.threads is {threads!r}, not null or an integer >= 1")
    depths = _field(_field(manifest, "adaptive", dict, "", path), "depths", list, "adaptive.", path)
    variants: List[Variant] = []
    for k, d in enumerate(depths):
        where = f"adaptive.depths[{k}]."
        vname, file = _field(d, "name", str, where, path), _field(d, "file", str, where, path)
        ms = _field(d, "measured_ms", (int, float), where, path)
        if not ms > 0 or vname in [v.name for v in variants]:
            raise SelectorError(f"{path}: {where}measured_ms is not > 0 or name {vname!r} repeats")
        full = os.path.normpath(os.path.join(bundle, file))
        if not full.startswith(os.path.normpath(bundle) + os.sep) or not os.path.isfile(full):
            raise SelectorError(f"{path}: {where}file {file} not found in the bundle")
        variants.append(Variant(vname, full, float(ms)))
    if not variants:
        raise SelectorError(f"{path}: adaptive.depths is empty")
    return name, threads, {k: v for k, v in settings.items() if k in SETTINGS[name]}, variants


def pin(bundle: str) -> None:
    """Run on the cores the depths were timed on (``runtime.affinity``), where the OS allows."""
    try:
        with open(os.path.join(bundle, "manifest.json")) as f:
            cores = (json.load(f).get("runtime") or {}).get("affinity") or []
    except (OSError, ValueError, AttributeError):
        return  # read_manifest says what is wrong with it
    if cores and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {int(c) for c in cores})
        except (OSError, ValueError, TypeError) as exc:
            msg = f"runtime.affinity {cores}: cannot pin to them ({_line(exc)})"
            raise SelectorError(msg) from None


def main(argv: Optional[List[str]] = None, out: Any = None) -> int:
    p = argparse.ArgumentParser(description="Run a bundle's depths within a latency budget.")
    p.add_argument("bundle")
    p.add_argument("--budget-ms", type=float, required=True)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--runs", type=int, help="inferences to run (default 100)")
    group.add_argument("--seconds", type=float, help="run for this long instead")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = out or sys.stdout
    try:
        pin(args.bundle)
        sel = Selector.from_bundle(args.bundle, args.budget_ms)
    except SelectorError as exc:
        print(f"selector: {exc}", file=sys.stderr)
        return 2
    rs = np.random.RandomState(args.seed)
    end = time.monotonic() + (args.seconds or 0.0)
    runs = args.runs if args.runs is not None else 100
    spent = {v.name: 0.0 for v in sel.variants}
    while time.monotonic() < end if args.seconds is not None else sel.count < runs:
        x = rs.standard_normal(sel.input_shape).astype(sel.input_dtype)
        name, switches = sel.current, len(sel.switches)
        sel.infer(x)
        spent[name] += sel.last_ms
        if len(sel.switches) > switches:
            print(json.dumps({"type": "switch", **sel.switches[-1]}), file=out, flush=True)
    ms = {k: round(v, 3) for k, v in spent.items()}
    summary = {"runs": sel.count, "switches": len(sel.switches), "ms_per_variant": ms}
    print(json.dumps({"type": "summary", **summary, "final": sel.current}), file=out, flush=True)
    return 0


if __name__ == "__main__":
    # Only JSON lines reach stdout: a runtime that prints goes to stderr with everything else.
    stream = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.exit(main(out=stream))
