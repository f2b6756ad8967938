#!/usr/bin/env python3
"""Hurricane on-device profiler: times models with the device's own runtime.

Shipped to the device as this one file and run there with the Python it has (>= 3.8), the
standard library and one runtime (ai_edge_litert or tflite_runtime, openvino, onnxruntime);
numpy comes with each of them. The host talks to it over stdin/stdout in JSON lines:

  {"cmd": "hello"}    -> {"type": "hello", "agent_version", "python", "fingerprint"}
  {"cmd": "measure", "runtime", "options", "items": [{"id", "path"[, "shapes"]}],
   "warmup", "rounds", "runs"}
                      -> one {"type": "result", ...} or {"type": "error", "id", ...} per item,
                         then {"type": "done", "n_ok", "n_err"[, "order"]}
  {"cmd": "infer", "id", "runtime", "options", "path",
   "input": {"shape": [N, ...], "dtype": "float32", "data": base64}}
                      -> {"type": "outputs", "id", "output": {"shape", "dtype": "float32",
                          "data": base64}, "runtime", "runtime_version", "delegate", "seconds",
                          "runs", "load_ms", "inputs", ...} or {"type": "error", "id", "error"}
  {"cmd": "quit"}     -> {"type": "bye"}, exit 0 (EOF on stdin also exits 0)

"infer" runs a model on given inputs, to check on the device that it computes what the host's
PyTorch does: the model is loaded exactly as "measure" loads it (same delegate, threads and
OpenVINO config), the N samples run a model batch at a time (one at a time for a batch-1 model)
and the outputs are stacked along axis 0. Data are raw little-endian float32 bytes in base64,
both ways; the int8/uint8 inputs and outputs of a full-int8 model are quantized and dequantized
on the device with the tensors' (scale, zero point). "seconds" is the time of the runs.

Anything else gets {"type": "error", "error"}. Only protocol lines reach stdout: file
descriptor 1 is pointed at stderr at start-up, so a runtime that prints cannot break the stream.
"""

from __future__ import annotations

import argparse
import base64
import functools
import gc
import glob
import json
import os
import platform
import random
import signal
import socket
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

AGENT_VERSION = 2  # 2: infer
RUNTIMES = ("litert", "openvino", "onnxruntime")
COMMON_OPTIONS = ("threads", "seed", "debug_order")
RUNTIME_OPTIONS = {
    "litert": ("xnnpack", "delegate"),
    "openvino": ("device", "precision_hint", "performance_hint", "streams", "config"),
    "onnxruntime": ("providers", "allow_cpu_fallback"),
}
DELEGATE_KEYS = ("library", "options", "allow_cpu_fallback")
ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}
MAX_ERROR_CHARS = 600


class AgentError(Exception):
    """A problem the user can fix; its message is the one line they see."""


def one_line(exc: BaseException | str) -> str:
    """Runtime messages span many lines (OpenVINO's carry C++ traces): the protocol wants one."""
    if isinstance(exc, (AgentError, str)):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 3] + "..."
    return text or "unknown error"


def log(msg: str) -> None:
    """Diagnostics go to stderr; stdout carries only the protocol."""
    sys.stderr.write(f"[agent] {msg}\n")
    sys.stderr.flush()


class Channel:
    """The protocol stream: a private copy of the original stdout, one JSON object a line."""

    def __init__(self) -> None:
        sys.stdout.flush()
        fd = os.dup(1)
        os.dup2(2, 1)  # C libraries and stray prints now land on stderr
        sys.stdout = sys.stderr
        self._out = os.fdopen(fd, "w", encoding="utf-8")

    def send(self, msg: dict) -> None:
        self._out.write(json.dumps(msg, separators=(",", ":")) + "\n")
        self._out.flush()

    def error(self, item_id: str | None, message: str) -> None:
        msg = {"type": "error", "error": message}
        if item_id is not None:
            msg = {"type": "error", "id": item_id, "error": message}
        self.send(msg)


# --------------------------------------------------------------------------- fingerprint


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace").replace("\x00", "").strip()
    except OSError:
        return None


def _cpuinfo() -> dict:
    """CPU model names differ by architecture: x86 has 'model name', ARM 'Processor'/'Hardware'
    (or nothing but implementer/part codes), so collect what there is."""
    found: dict = {}
    parts = []
    implementer = None
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        key, sep, val = line.partition(":")
        key, val = key.strip().lower(), val.strip()
        if not sep or not val:
            continue
        if key in ("model name", "processor", "hardware", "cpu model") and not val.isdigit():
            found.setdefault(key, val)
        elif key == "cpu implementer":
            implementer = val
        elif key == "cpu part":
            part = f"{implementer}:{val}"
            if part not in parts:
                parts.append(part)
    board = _read("/sys/firmware/devicetree/base/model")
    soc = found.get("hardware") or _read("/sys/devices/soc0/machine")
    model = (
        found.get("model name")
        or found.get("processor")
        or found.get("cpu model")
        or found.get("hardware")
        or board
        or platform.processor()
        or platform.machine()
    )
    return {"cpu_model": model, "soc": soc, "board": board, "cpu_parts": parts}


def _cpufreq() -> dict:
    governors = set()
    max_freqs = set()
    for cpu_dir in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq"):
        gov = _read(os.path.join(cpu_dir, "scaling_governor"))
        if gov:
            governors.add(gov)
        for name in ("cpuinfo_max_freq", "scaling_max_freq"):
            freq = _read(os.path.join(cpu_dir, name))
            if freq and freq.isdigit():
                max_freqs.add(int(freq))
                break
    return {
        "governors": sorted(governors),
        "max_freq_khz": max(max_freqs) if max_freqs else None,
        "max_freqs_khz": sorted(max_freqs),
    }


def _affinity() -> list | None:
    if not hasattr(os, "sched_getaffinity"):
        return None
    try:
        return sorted(os.sched_getaffinity(0))
    except OSError:
        return None


def _module_version(module: object) -> str:
    version = getattr(module, "__version__", None)
    if not version:
        get_version = getattr(module, "get_version", None)
        if get_version is None:
            runtime = getattr(module, "runtime", None)  # OpenVINO 2022.x
            get_version = getattr(runtime, "get_version", None)
        version = get_version() if get_version else None
    return str(version) if version else "unknown"


def installed_runtimes() -> tuple:
    """Which runtime packages import here, with their versions (and why the broken ones fail)."""
    versions = {}
    errors = {}
    for name in ("ai_edge_litert", "tflite_runtime", "openvino", "onnxruntime"):
        try:
            module = __import__(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # installed, but one of its dependencies is missing
                errors[name] = one_line(exc)
            continue
        except Exception as exc:
            errors[name] = one_line(exc)
            continue
        versions[name] = _module_version(module)
    return versions, errors


def fingerprint() -> dict:
    """What makes timings from this device comparable (or not) with other runs."""
    versions, errors = installed_runtimes()
    fp: dict = {}
    fp.update(_cpuinfo())
    fp["cores"] = os.cpu_count()
    fp["affinity"] = _affinity()
    fp.update(_cpufreq())
    fp["machine"] = platform.machine()
    fp["os"] = platform.platform()
    fp["hostname"] = socket.gethostname()
    fp["runtimes"] = versions
    if errors:
        fp["runtime_errors"] = errors
    if "onnxruntime" in versions:
        try:
            fp["onnxruntime_providers"] = list(sys.modules["onnxruntime"].get_available_providers())
        except Exception as exc:
            log(f"cannot list onnxruntime providers: {one_line(exc)}")
    if "openvino" in versions:
        try:
            fp["openvino_devices"] = list(_openvino_core().available_devices)
        except Exception as exc:
            log(f"cannot list openvino devices: {one_line(exc)}")
    return fp


# --------------------------------------------------------------------------- runtimes

_RUNTIME_CACHE: dict = {}


def runtime_module(runtime: str) -> tuple:
    """Import a runtime once; a failed import is remembered so every item gets the same error."""
    if runtime not in _RUNTIME_CACHE:
        try:
            _RUNTIME_CACHE[runtime] = _import_runtime(runtime)
        except AgentError as exc:
            _RUNTIME_CACHE[runtime] = exc
    cached = _RUNTIME_CACHE[runtime]
    if isinstance(cached, AgentError):
        raise cached
    return cached


def _import_runtime(runtime: str) -> tuple:
    if runtime == "litert":
        problems = []
        for package in ("ai_edge_litert", "tflite_runtime"):
            try:
                pkg = __import__(package)
                module = __import__(package + ".interpreter", fromlist=["Interpreter"])
            except ModuleNotFoundError as exc:
                if exc.name not in (package, package + ".interpreter"):
                    problems.append(f"{package}: {one_line(exc)}")
                continue
            except Exception as exc:
                problems.append(f"{package}: {one_line(exc)}")
                continue
            return module, _module_version(pkg)
        detail = (" ({})".format("; ".join(problems))) if problems else ""
        raise AgentError(
            "runtime 'litert' is not installed on this device: neither ai_edge_litert nor "
            f"tflite_runtime imports{detail}; pip install ai-edge-litert, or pick another runtime"
        )
    package = runtime
    try:
        module = __import__(package)
    except Exception as exc:
        raise AgentError(
            f"runtime '{runtime}' is not installed on this device ({one_line(exc)}); "
            f"pip install {package}, or pick another runtime"
        ) from None
    return module, _module_version(module)


def _openvino_core() -> Any:
    if "_ov_core" not in _RUNTIME_CACHE:
        ov = __import__("openvino")
        core_cls = getattr(ov, "Core", None)
        if core_cls is None:  # OpenVINO 2022.x keeps it in openvino.runtime
            core_cls = __import__("openvino.runtime", fromlist=["Core"]).Core
        _RUNTIME_CACHE["_ov_core"] = core_cls()
    return _RUNTIME_CACHE["_ov_core"]


def random_array(np: Any, rs: Any, shape: list, dtype: Any) -> Any:
    """Random normal floats; full-range 8/16-bit ints (quantized inputs); 0/1 for wider ints,
    which are usually indices or sizes."""
    dt = np.dtype(dtype)
    size = tuple(int(d) for d in shape)
    if dt.kind == "f":
        return np.asarray(rs.standard_normal(size)).astype(dt)
    if dt.kind in "iu":
        if dt.itemsize <= 2:
            info = np.iinfo(dt)
            return np.asarray(rs.randint(int(info.min), int(info.max) + 1, size=size)).astype(dt)
        return np.asarray(rs.randint(0, 2, size=size)).astype(dt)
    if dt.kind == "b":
        return np.asarray(rs.randint(0, 2, size=size)).astype(bool)
    raise AgentError(f"cannot make a random input of dtype {dt}")


def static_shape(name: str, dims: list, override: list | None) -> list:
    """A dynamic batch dimension becomes 1; any other dynamic dimension needs the item's shapes."""
    if override is not None:
        return list(override)
    shape = []
    for i, d in enumerate(dims):
        if isinstance(d, int) and d >= 0:
            shape.append(d)
        elif i == 0:
            shape.append(1)
        else:
            raise AgentError(
                "input '{}' has dynamic shape {}; export the model with a static input shape or "
                "give the item 'shapes'".format(
                    name, ["?" if not isinstance(x, int) or x < 0 else x for x in dims]
                )
            )
    return shape


def _override(shapes: list | None, index: int, count: int) -> list | None:
    if shapes is None:
        return None
    if len(shapes) != count:
        raise AgentError(f"item gives {len(shapes)} shapes but the model has {count} inputs")
    return shapes[index]


def to_model(np: Any, name: str, arr: Any, dtype: Any, quant: tuple | None) -> Any:
    """Host floats -> what the model's input tensor holds: a cast for a float input, (scale,
    zero point) quantization for the int8/uint8 input of a full-int8 model."""
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return np.ascontiguousarray(arr, dtype=dt)
    scale, zero = quant or (0.0, 0)
    if dt.kind in "iu" and scale:
        info = np.iinfo(dt)
        v = np.asarray(arr, dtype=np.float32) / np.float32(scale)
        q = np.trunc(v + np.copysign(np.float32(0.5), v)) + zero  # LiteRT rounds half away
        return np.clip(q, info.min, info.max).astype(dt)
    raise AgentError(
        f"input '{name}' is {dt} without quantization parameters; infer feeds float32 samples "
        "only to float or quantized inputs"
    )


def from_model(np: Any, arr: Any, quant: tuple | None) -> Any:
    """An output tensor -> float32 for the host, dequantized when it is quantized."""
    arr = np.asarray(arr)
    scale, zero = quant or (0.0, 0)
    if arr.dtype.kind in "iu" and scale:
        return (arr.astype(np.float32) - np.float32(zero)) * np.float32(scale)
    return arr.astype(np.float32)


class Loaded:
    """One model ready to time: `invoke` runs it once on inputs already in place; `run` sets
    given inputs (host floats, one array per model input), runs it and returns its outputs
    as float32 arrays."""

    def __init__(
        self,
        invoke: Callable[[], object],
        info: dict,
        keep: tuple = (),
        run: Callable[[list], list] | None = None,
    ) -> None:
        self.invoke: Callable[[], object] | None = invoke
        self.run = run
        self.info = info
        self.keep = keep  # objects that must outlive `invoke` (a delegate after its interpreter)

    def close(self) -> None:
        """Release in `keep` order (an interpreter before its delegate)."""
        self.invoke = None
        self.run = None
        keep = list(self.keep)
        self.keep = ()
        while keep:
            keep.pop(0)


def load_litert(path: str, opts: dict, shapes: list | None, seed: int) -> Loaded:
    """Interpreter with XNNPACK (default), builtin kernels only, or an external delegate; a
    delegate that fails to load or claims nothing is an error unless fallback is allowed."""
    module, version = runtime_module("litert")
    import numpy as np

    kwargs: dict = {"model_path": path}
    threads = opts.get("threads")
    if threads is not None:
        kwargs["num_threads"] = threads
    warnings = []
    delegate_name: str | None = "xnnpack"
    if not opts.get("xnnpack", True):
        resolver = getattr(module, "OpResolverType", None)
        if resolver is None or not hasattr(resolver, "BUILTIN_WITHOUT_DEFAULT_DELEGATES"):
            raise AgentError(
                f"this LiteRT ({version}) cannot turn XNNPACK off (no OpResolverType."
                "BUILTIN_WITHOUT_DEFAULT_DELEGATES); upgrade it or set xnnpack = true"
            )
        kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        delegate_name = "builtin"
    delegate = None
    spec = opts.get("delegate")
    fallback = bool(spec and spec.get("allow_cpu_fallback", False))
    if spec:
        library = spec["library"]
        problem = None
        if os.sep in library and not os.path.exists(library):
            problem = (
                f"delegate library {library} not found on the device; fix delegate.library in the "
                "device spec (or install the library there)"
            )
        else:
            dopts = {str(k): str(v) for k, v in (spec.get("options") or {}).items()}
            try:
                delegate = module.load_delegate(library, dopts)
            except Exception as exc:
                problem = (
                    f"delegate library {library} failed to load ({one_line(exc)}); "
                    "fix the delegate section of the device spec"
                )
        if problem is not None:
            if not fallback:
                raise AgentError(problem)
            warnings.append(problem + "; measured without it because allow_cpu_fallback is true")
            delegate_name = None
        else:
            kwargs["experimental_delegates"] = [delegate]
            delegate_name = os.path.basename(library)
    try:
        interpreter = module.Interpreter(**kwargs)
    except Exception as exc:
        if delegate is None:
            raise
        raise AgentError(
            f"delegate {delegate_name} could not be applied to the model ({one_line(exc)}); "
            "check the model suits the delegate and the delegate options in the device spec"
        ) from None
    info: dict = {}
    if delegate is not None:
        # External delegates are applied in the constructor, XNNPACK only at allocate_tensors:
        # DELEGATE nodes seen now are the external delegate's partitions.
        try:
            partitions = sum(
                1 for op in interpreter._get_ops_details() if op.get("op_name") == "DELEGATE"
            )
        except Exception:
            partitions = None
            warnings.append("cannot check which ops the delegate took (old LiteRT)")
        info["delegate_partitions"] = partitions
        if partitions == 0:
            problem = f"delegate {delegate_name} took none of the model's ops"
            if not fallback:
                raise AgentError(
                    problem + ", so it would run on the CPU; check the model suits the delegate "
                    "(e.g. full int8) or set allow_cpu_fallback"
                )
            warnings.append(problem + "; measured on the CPU because allow_cpu_fallback is true")
            delegate_name = None
    details = interpreter.get_input_details()
    for i, d in enumerate(details):
        dims = [int(x) for x in d.get("shape_signature", d["shape"])]
        shape = static_shape(d["name"], dims, _override(shapes, i, len(details)))
        if list(shape) != [int(x) for x in d["shape"]]:
            interpreter.resize_tensor_input(d["index"], shape)
    interpreter.allocate_tensors()
    rs = np.random.RandomState(seed)
    inputs = []
    for d in interpreter.get_input_details():
        arr = random_array(np, rs, d["shape"], d["dtype"])
        interpreter.set_tensor(d["index"], arr)
        inputs.append({"name": d["name"], "shape": list(arr.shape), "dtype": str(arr.dtype)})
    info.update(
        runtime_version=version,
        delegate=delegate_name,
        threads=threads,
        inputs=inputs,
    )
    if warnings:
        info["warning"] = "; ".join(warnings)
    in_details = [(d, _litert_quant(d)) for d in interpreter.get_input_details()]
    out_details = [(d, _litert_quant(d)) for d in interpreter.get_output_details()]

    def run(arrays: list) -> list:
        for (d, quant), arr in zip(in_details, arrays):
            interpreter.set_tensor(d["index"], to_model(np, d["name"], arr, d["dtype"], quant))
        interpreter.invoke()
        return [from_model(np, interpreter.get_tensor(d["index"]), q) for d, q in out_details]

    return Loaded(interpreter.invoke, info, keep=(interpreter, delegate), run=run)


def _litert_quant(detail: dict) -> tuple | None:
    """(scale, zero point) of a per-tensor quantized input or output, else None."""
    params = detail.get("quantization_parameters") or {}
    scales = params.get("scales")
    if scales is not None and len(scales) > 1:
        raise AgentError(
            f"tensor '{detail['name']}' is quantized per channel; infer handles per-tensor "
            "quantized (or float) model inputs and outputs only"
        )
    scale, zero = detail.get("quantization", (0.0, 0))
    return (float(scale), int(zero)) if scale else None


def load_onnxruntime(path: str, opts: dict, shapes: list | None, seed: int) -> Loaded:
    """Sequential session, all graph optimisations; an execution provider that onnxruntime
    drops (it only warns) is an error unless allow_cpu_fallback."""
    ort, version = runtime_module("onnxruntime")
    import numpy as np

    so = ort.SessionOptions()
    threads = opts.get("threads")
    if threads is not None:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = []
    for p in opts.get("providers") or ["CPUExecutionProvider"]:
        providers.append(tuple(p) if isinstance(p, list) else p)
    session = ort.InferenceSession(path, sess_options=so, providers=providers)
    used = list(session.get_providers())
    wanted = [p[0] if isinstance(p, tuple) else p for p in providers]
    dropped = [p for p in wanted if p not in used]
    warnings = []
    if dropped:
        problem = "onnxruntime did not use execution provider(s) {} (available here: {})".format(
            ", ".join(dropped),
            ", ".join(ort.get_available_providers()),
        )
        if not opts.get("allow_cpu_fallback", False):
            raise AgentError(problem + "; install them or fix 'providers' in the device spec")
        warnings.append(problem + "; measured with {}".format(", ".join(used)))
    rs = np.random.RandomState(seed)
    feeds = {}
    inputs = []
    model_inputs = session.get_inputs()
    for i, inp in enumerate(model_inputs):
        if inp.type not in ORT_DTYPES:
            raise AgentError(f"input '{inp.name}' has unsupported type {inp.type}")
        dims = [d if isinstance(d, int) else -1 for d in inp.shape]
        shape = static_shape(inp.name, dims, _override(shapes, i, len(model_inputs)))
        arr = random_array(np, rs, shape, ORT_DTYPES[inp.type])
        feeds[inp.name] = arr
        inputs.append({"name": inp.name, "shape": list(arr.shape), "dtype": str(arr.dtype)})
    names = [o.name for o in session.get_outputs()]
    info = {
        "runtime_version": version,
        "delegate": used[0] if used else None,
        "threads": threads,
        "providers": used,
        "inputs": inputs,
    }
    if warnings:
        info["warning"] = "; ".join(warnings)
    in_types = [(inp.name, ORT_DTYPES[inp.type]) for inp in model_inputs]

    def run(arrays: list) -> list:
        given = {n: to_model(np, n, a, t, None) for (n, t), a in zip(in_types, arrays)}
        return [from_model(np, out, None) for out in session.run(names, given)]

    return Loaded(functools.partial(session.run, names, feeds), info, keep=(session,), run=run)


def _ov_str(value: object) -> object:
    """OpenVINO returns its own types for some properties (precision is a Type)."""
    if isinstance(value, (list, tuple)):
        return [_ov_str(v) for v in value]
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    name = getattr(value, "get_type_name", None)
    return name() if name else str(value)


def load_openvino(path: str, opts: dict, shapes: list | None, seed: int) -> Loaded:
    """IR (.xml with its .bin beside it) or anything else read_model takes, compiled for latency;
    properties the device does not know are left out and reported, never sent blind."""
    ov, version = runtime_module("openvino")
    import numpy as np

    if path.lower().endswith(".xml"):
        weights = os.path.splitext(path)[0] + ".bin"
        if not os.path.isfile(weights):
            raise AgentError(f"IR weights {weights} not found beside {path}; ship the .bin too")
    core = _openvino_core()
    device = opts.get("device") or "CPU"
    model = core.read_model(path)
    new_shapes = {}
    for i, port in enumerate(model.inputs):
        ps = port.get_partial_shape()
        if ps.is_dynamic or shapes is not None:
            dims = [d.get_length() if d.is_static else -1 for d in ps]
            name = port.get_any_name() if port.get_names() else f"input{i}"
            new_shapes[port] = static_shape(name, dims, _override(shapes, i, len(model.inputs)))
    if new_shapes:
        model.reshape(new_shapes)
    try:
        supported = set(core.get_property(device, "SUPPORTED_PROPERTIES"))
    except Exception:
        supported = None
    warnings = []
    config = {"PERFORMANCE_HINT": str(opts.get("performance_hint") or "LATENCY")}
    if opts.get("streams") is not None:
        config["NUM_STREAMS"] = str(opts["streams"])
    threads = opts.get("threads")
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    if opts.get("precision_hint"):
        config["INFERENCE_PRECISION_HINT"] = str(opts["precision_hint"])
    for key, value in (opts.get("config") or {}).items():
        config[str(key)] = str(value)
    if supported is not None:
        for key in list(config):
            if key not in supported:
                if key in (opts.get("config") or {}):
                    raise AgentError(f"OpenVINO device {device} has no property {key}")
                warnings.append(f"device {device} ignores {key}")
                del config[key]
    compiled = core.compile_model(model, device, config)
    request = compiled.create_infer_request()
    rs = np.random.RandomState(seed)
    inputs: list = []
    for i, port in enumerate(compiled.inputs):
        tensor = request.get_input_tensor(i)
        arr = random_array(np, rs, list(tensor.shape), tensor.data.dtype)
        tensor.data[...] = arr
        name = port.get_any_name() if port.get_names() else f"input{i}"
        inputs.append({"name": name, "shape": list(arr.shape), "dtype": str(arr.dtype)})
    actual: dict = {}
    for key in (
        "EXECUTION_DEVICES",
        "INFERENCE_NUM_THREADS",
        "INFERENCE_PRECISION_HINT",
        "PERFORMANCE_HINT",
        "NUM_STREAMS",
    ):
        try:
            actual[key] = _ov_str(compiled.get_property(key))
        except Exception:
            actual[key] = None
    exec_devices = actual["EXECUTION_DEVICES"]
    invoke = request.infer
    try:
        request.infer(share_outputs=True)  # skips copying outputs (OpenVINO >= 2023.1)
        invoke = functools.partial(request.infer, share_outputs=True)
    except TypeError:
        pass
    info = {
        "runtime_version": version,
        "delegate": ",".join(exec_devices) if exec_devices else device,
        "threads": threads if threads is not None else actual["INFERENCE_NUM_THREADS"],
        "device": device,
        "execution_devices": exec_devices,
        "precision": actual["INFERENCE_PRECISION_HINT"],
        "performance_hint": actual["PERFORMANCE_HINT"],
        "streams": actual["NUM_STREAMS"],
        "inputs": inputs,
    }
    if warnings:
        info["warning"] = "; ".join(warnings)
    n_outputs = len(compiled.outputs)

    def run(arrays: list) -> list:
        for i, arr in enumerate(arrays):
            tensor = request.get_input_tensor(i)
            tensor.data[...] = to_model(np, inputs[i]["name"], arr, tensor.data.dtype, None)
        request.infer()
        return [from_model(np, request.get_output_tensor(i).data, None) for i in range(n_outputs)]

    return Loaded(invoke, info, keep=(request, compiled), run=run)


LOADERS = {"litert": load_litert, "openvino": load_openvino, "onnxruntime": load_onnxruntime}


# --------------------------------------------------------------------------- measure


def _int_field(cmd: dict, key: str, default: int, minimum: int) -> int:
    value = cmd.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise AgentError(f"measure: '{key}' must be an integer >= {minimum}, got {value!r}")
    return value


def parse_measure(cmd: dict) -> dict:
    """Check the whole request before loading anything, so a typo fails fast and clearly."""
    params = parse_runtime(cmd)
    params.update(
        warmup=_int_field(cmd, "warmup", 10, 0),
        rounds=_int_field(cmd, "rounds", 5, 1),
        runs=_int_field(cmd, "runs", 10, 1),
        # Short ops get more runs per round, until the round has this much timed time: the
        # statistic steadies and the device spends its time measuring, not waiting.
        min_round_ms=_int_field(cmd, "min_round_ms", 0, 0),
        max_runs=_int_field(cmd, "max_runs", 10000, 1),
    )
    return params


def parse_runtime(cmd: dict) -> dict:
    """The runtime and its options, as measure and infer both take them."""
    runtime = cmd.get("runtime")
    if runtime not in RUNTIMES:
        raise AgentError(
            "unknown runtime {!r}; expected one of {}".format(runtime, ", ".join(RUNTIMES))
        )
    opts = cmd.get("options") or {}
    if not isinstance(opts, dict):
        raise AgentError("{}: 'options' must be an object".format(cmd.get("cmd")))
    known = COMMON_OPTIONS + RUNTIME_OPTIONS[runtime]
    for key in opts:
        if key not in known:
            raise AgentError(
                "unknown option {!r} for runtime {}; known: {}".format(
                    key, runtime, ", ".join(known)
                )
            )
    threads = opts.get("threads")
    if threads is not None and (
        not isinstance(threads, int) or isinstance(threads, bool) or threads < 1
    ):
        raise AgentError(f"option 'threads' must be an integer >= 1, got {threads!r}")
    seed = opts.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise AgentError(f"option 'seed' must be an integer, got {seed!r}")
    spec = opts.get("delegate")
    if spec is not None:
        if (
            not isinstance(spec, dict)
            or not isinstance(spec.get("library"), str)
            or not spec["library"]
        ):
            raise AgentError("option 'delegate' must be an object with a 'library' path")
        for key in spec:
            if key not in DELEGATE_KEYS:
                raise AgentError(
                    "unknown delegate field {!r}; known: {}".format(key, ", ".join(DELEGATE_KEYS))
                )
        if spec.get("options") is not None and not isinstance(spec["options"], dict):
            raise AgentError("delegate 'options' must be an object")
    if opts.get("config") is not None and not isinstance(opts["config"], dict):
        raise AgentError("option 'config' must be an object")
    if opts.get("providers") is not None and not isinstance(opts["providers"], list):
        raise AgentError("option 'providers' must be a list")
    return {"runtime": runtime, "options": opts, "seed": seed}


def _check_item(item: object, seen: set) -> tuple:
    """(id, path, shapes) of one item, or AgentError naming what is wrong with it."""
    if not isinstance(item, dict) or not isinstance(item.get("id"), str):
        raise AgentError("each item must be an object with a string 'id' and 'path'")
    item_id = item["id"]
    if item_id in seen:
        raise AgentError(f"duplicate item id {item_id!r}")
    path = item.get("path")
    if not isinstance(path, str) or not path:
        raise AgentError("item has no 'path'")
    shapes = item.get("shapes")
    if shapes is not None:
        ok = isinstance(shapes, list) and all(
            isinstance(s, list) and all(isinstance(d, int) and d > 0 for d in s) for s in shapes
        )
        if not ok:
            raise AgentError("item 'shapes' must be a list of shapes (lists of positive integers)")
    return item_id, path, shapes


def _ms(ns: float) -> float:
    return round(ns / 1e6, 6)


def summarise(samples_ns: list, rounds: list) -> dict:
    """Median of round medians is the statistic: robust to a round hit by a background burst."""
    samples = [_ms(s) for s in samples_ns]
    medians = [round(statistics.median(r), 6) for r in rounds]
    return {
        "samples_ms": samples,
        "round_medians_ms": medians,
        "median_ms": round(statistics.median(medians), 6),
        "mean_ms": round(statistics.mean(samples), 6),
        "std_ms": round(statistics.stdev(samples), 6) if len(samples) > 1 else 0.0,
        "min_ms": min(samples),
        "max_ms": max(samples),
        "n": len(samples),
    }


def round_orders(ids: list, rounds: int, seed: int) -> list:
    """A shuffled order per round, never the same twice in a row, so drift and caches do not
    favour whichever item comes first."""
    rng = random.Random(seed)
    orders = []
    previous = None
    for _ in range(rounds):
        order = list(ids)
        rng.shuffle(order)
        if previous is not None and len(order) > 1 and order == previous:
            order = order[1:] + order[:1]
        orders.append(order)
        previous = order
    return orders


def _maybe_crash(item_id: str) -> None:
    """Fault injection for the host's tests: die like a runtime segfault on a chosen item.
    Inert unless HURRICANE_AGENT_CRASH_ON is set in the agent's environment."""
    needle = os.environ.get("HURRICANE_AGENT_CRASH_ON")
    if needle and needle in item_id:
        os.kill(os.getpid(), signal.SIGSEGV)


def handle_measure(cmd: dict, chan: Channel) -> None:
    """Load every item, warm each up, then time them interleaved round by round; every item
    ends in exactly one result or error line, and the command in one done line."""
    n_ok = 0
    n_err = 0
    items = cmd.get("items")
    if not isinstance(items, list):
        chan.error(None, 'measure needs \'items\': a list of {"id", "path"}')
        chan.send({"type": "done", "n_ok": 0, "n_err": 0})
        return
    try:
        params = parse_measure(cmd)
        request_error = None
    except AgentError as exc:
        params = None
        request_error = one_line(exc)
    loaded: dict = {}
    order_ids = []
    seen: set = set()
    for index, item in enumerate(items):
        item_id = item.get("id") if isinstance(item, dict) else None
        item_id = item_id if isinstance(item_id, str) else None
        try:
            item_id, path, shapes = _check_item(item, seen)
            seen.add(item_id)
            if params is None:
                raise AgentError(request_error)
            runtime_module(params["runtime"])  # a missing runtime is the first thing to fix
            if not os.path.isfile(path):
                raise AgentError(f"model file {path} not found on the device")
            _maybe_crash(item_id)
            t0 = time.perf_counter()
            model = LOADERS[params["runtime"]](path, params["options"], shapes, params["seed"])
            model.info["load_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
        except Exception as exc:
            n_err += 1
            chan.error(item_id if item_id is not None else f"#{index}", one_line(exc))
            continue
        loaded[item_id] = model
        order_ids.append(item_id)
    if params is None:
        chan.send({"type": "done", "n_ok": 0, "n_err": n_err})
        return
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside a timed run is noise
    try:
        for item_id in list(order_ids):
            try:
                invoke = loaded[item_id].invoke
                for _ in range(params["warmup"]):
                    invoke()
            except Exception as exc:
                n_err += 1
                chan.error(item_id, f"warm-up run failed: {one_line(exc)}")
                loaded.pop(item_id).close()
                order_ids.remove(item_id)
        orders = round_orders(order_ids, params["rounds"], params["seed"])
        samples: dict = {i: [] for i in order_ids}
        rounds: dict = {i: [] for i in order_ids}
        clock = time.perf_counter_ns
        runs = params["runs"]
        min_round_ns = params["min_round_ms"] * 1_000_000
        max_runs = max(runs, params["max_runs"])
        for order in orders:
            for item_id in order:
                if item_id not in loaded:
                    continue  # failed in an earlier round
                invoke = loaded[item_id].invoke
                these: list = []
                try:
                    spent = 0
                    while len(these) < runs or (spent < min_round_ns and len(these) < max_runs):
                        t0 = clock()
                        invoke()
                        t1 = clock()
                        these.append(t1 - t0)
                        spent += t1 - t0
                except Exception as exc:
                    n_err += 1
                    chan.error(item_id, f"timed run failed: {one_line(exc)}")
                    loaded.pop(item_id).close()
                    continue
                samples[item_id].extend(these)
                rounds[item_id].append([_ms(s) for s in these])
    finally:
        if gc_was_enabled:
            gc.enable()
    for item_id in order_ids:
        if item_id not in loaded:
            continue
        msg = {"type": "result", "id": item_id}
        msg.update(summarise(samples[item_id], rounds[item_id]))
        msg["runtime"] = params["runtime"]
        msg.update(loaded[item_id].info)
        msg.update(warmup=params["warmup"], rounds=params["rounds"], runs=runs)
        msg["runs_per_round"] = [len(r) for r in rounds[item_id]]
        chan.send(msg)
        n_ok += 1
    for model in loaded.values():
        model.close()
    loaded.clear()
    gc.collect()
    done: dict = {"type": "done", "n_ok": n_ok, "n_err": n_err}
    if params["options"].get("debug_order"):
        done["order"] = orders
    chan.send(done)


# --------------------------------------------------------------------------- infer


def _is_shape(shape: object) -> bool:
    return isinstance(shape, list) and all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
    )


def parse_input(np: Any, spec: object) -> Any:
    """The request's samples as a float32 array, or AgentError naming what is malformed."""
    if not isinstance(spec, dict):
        raise AgentError('infer needs \'input\': {"shape", "dtype": "float32", "data": base64}')
    shape = spec.get("shape")
    if not _is_shape(shape) or not shape:
        raise AgentError(f"infer: input 'shape' must be a list of positive integers, got {shape!r}")
    if spec.get("dtype", "float32") != "float32":
        raise AgentError(
            "infer: input 'dtype' must be 'float32' (quantized models take floats too), "
            "got {!r}".format(spec.get("dtype"))
        )
    data = spec.get("data")
    if not isinstance(data, str):
        raise AgentError("infer: input 'data' must be a base64 string")
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:  # binascii.Error is one
        raise AgentError("infer: input 'data' is not valid base64") from None
    count = 1
    for d in shape:
        count *= d
    if len(raw) != 4 * count:
        raise AgentError(
            f"infer: input 'data' holds {len(raw)} bytes but shape {shape} in float32 needs "
            f"{4 * count}"
        )
    return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)


def _chunks(shape: list, model_shape: list) -> int:
    """How many model runs an input of `shape` takes: its batch over the model's."""
    batch = model_shape[0] if model_shape else 0
    if (
        batch > 0
        and len(shape) == len(model_shape)
        and list(shape[1:]) == list(model_shape[1:])
        and shape[0] % batch == 0
    ):
        return shape[0] // batch
    want = "[N, {}]".format(", ".join(str(d) for d in model_shape[1:]))
    if batch > 1:
        want += f" with N a multiple of {batch}"
    raise AgentError(
        f"input shape {list(shape)} does not fit the model's input {list(model_shape)}; "
        f"send {want} float32 samples"
    )


def _encode(np: Any, arr: Any) -> dict:
    arr = np.ascontiguousarray(arr, dtype="<f4")
    return {
        "shape": [int(d) for d in arr.shape],
        "dtype": "float32",
        "data": base64.b64encode(arr.tobytes()).decode("ascii"),
    }


def handle_infer(cmd: dict, chan: Channel) -> None:
    """Run one model on the host's samples with the same loader measure uses; one outputs or
    error line."""
    item_id = cmd.get("id")
    if not isinstance(item_id, str) or not item_id:
        chan.error(None, "infer needs a string 'id'")
        return
    model = None
    try:
        params = parse_runtime(cmd)
        path = cmd.get("path")
        if not isinstance(path, str) or not path:
            raise AgentError("infer needs a 'path': the model file on the device")
        runtime_module(params["runtime"])
        import numpy as np

        batch = parse_input(np, cmd.get("input"))
        if not os.path.isfile(path):
            raise AgentError(f"model file {path} not found on the device")
        _maybe_crash(item_id)
        t0 = time.perf_counter()
        model = LOADERS[params["runtime"]](path, params["options"], None, params["seed"])
        model.info["load_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
        inputs = model.info["inputs"]
        if len(inputs) != 1:
            raise AgentError(
                f"infer takes models with one input; {os.path.basename(path)} has {len(inputs)}"
            )
        run = model.run
        if run is None:  # every loader gives one; a Loaded without it cannot take inputs
            raise AgentError(f"runtime {params['runtime']} cannot run a model on given inputs")
        n = _chunks(list(batch.shape), inputs[0]["shape"])
        step = inputs[0]["shape"][0]
        outs = []
        t0 = time.perf_counter()
        for i in range(n):
            got = run([batch[i * step : (i + 1) * step]])
            if len(got) != 1:
                raise AgentError(
                    f"infer takes models with one output; {os.path.basename(path)} has {len(got)}"
                )
            outs.append(got[0])
        seconds = time.perf_counter() - t0
        if all(o.ndim >= 1 and o.shape[0] == step for o in outs):
            output = np.concatenate(outs, axis=0)
        else:  # an output without the batch axis: one per run
            output = np.stack(outs, axis=0)
    except Exception as exc:
        chan.error(item_id, one_line(exc))
        return
    finally:
        if model is not None:
            model.close()
    msg: dict = {"type": "outputs", "id": item_id, "output": _encode(np, output)}
    msg["runtime"] = params["runtime"]
    msg.update(model.info)
    msg["seconds"] = round(seconds, 6)
    msg["runs"] = n
    chan.send(msg)


# --------------------------------------------------------------------------- main loop


def serve(chan: Channel) -> int:
    """Answer commands until quit or EOF; no request, however malformed, ends the loop."""
    while True:
        line = sys.stdin.readline()
        if not line:
            return 0
        line = line.strip()
        if not line:
            continue
        try:
            cmd = json.loads(line)
        except ValueError as exc:
            chan.error(None, f"bad JSON: {one_line(exc)}")
            continue
        if not isinstance(cmd, dict):
            chan.error(None, "a command must be a JSON object with a 'cmd' field")
            continue
        name = cmd.get("cmd")
        try:
            if name == "hello":
                chan.send(
                    {
                        "type": "hello",
                        "agent_version": AGENT_VERSION,
                        "python": platform.python_version(),
                        "fingerprint": fingerprint(),
                    }
                )
            elif name == "measure":
                handle_measure(cmd, chan)
            elif name == "infer":
                handle_infer(cmd, chan)
            elif name == "quit":
                chan.send({"type": "bye"})
                return 0
            else:
                chan.error(
                    None, f"unknown command {name!r}; expected hello, measure, infer or quit"
                )
        except Exception as exc:  # a bug in the agent: report it, keep serving
            log(f"internal error: {exc!r}")
            chan.error(None, f"agent internal error: {one_line(exc)}")


def parse_cpus(text: str) -> set:
    """'0,1' or '4-7' or '0,2-3' -> a set of CPU numbers."""
    cpus: set = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"bad CPU list {text!r}; expected e.g. 0,1 or 4-7")
        cpus.update(range(int(lo), int(hi if sep else lo) + 1))
    if not cpus:
        raise ValueError("empty CPU list")
    return cpus


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--affinity", help="pin to these CPUs, e.g. 0,1 or 4-7")
    args = parser.parse_args(argv)
    chan = Channel()
    if args.affinity:
        try:
            cpus = parse_cpus(args.affinity)
        except ValueError as exc:
            log(str(exc))
            return 2
        if not hasattr(os, "sched_setaffinity"):
            log("this OS cannot pin CPUs (no os.sched_setaffinity); running unpinned")
        else:
            try:
                os.sched_setaffinity(0, cpus)
            except OSError as exc:
                log(f"cannot pin to CPUs {sorted(cpus)}: {exc}")
                return 2
    try:
        return serve(chan)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
