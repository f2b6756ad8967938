"""The on-device profiler agent, driven over its JSON-lines protocol with the real runtimes."""

from __future__ import annotations

import ast
import glob
import json
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[1] / "profilers" / "agent" / "agent.py"
TIMEOUT_S = 120


class Agent:
    """The agent as a subprocess; every stdout line must parse as JSON (nothing else may leak)."""

    def __init__(self, *args: str, python: str = sys.executable, flags: tuple = ()) -> None:
        self.proc = subprocess.Popen(
            [python, *flags, str(AGENT), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(
            target=self._pump, args=(self.proc.stdout, self.lines), daemon=True
        ).start()
        threading.Thread(target=self._drain, daemon=True).start()

    @staticmethod
    def _pump(stream, q: queue.Queue) -> None:
        for line in stream:
            q.put(line)
        q.put(None)

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)

    def send(self, cmd: dict | str) -> None:
        self.proc.stdin.write((cmd if isinstance(cmd, str) else json.dumps(cmd)) + "\n")
        self.proc.stdin.flush()

    def read(self) -> dict:
        line = self.lines.get(timeout=TIMEOUT_S)
        assert line is not None, "agent exited; stderr:\n" + "".join(self.stderr[-30:])
        return json.loads(line)

    def ask(self, cmd: dict) -> dict:
        self.send(cmd)
        return self.read()

    def measure(self, **cmd) -> tuple[dict, dict]:
        """Send one measure; return ({id: result or error line}, done line)."""
        self.send({"cmd": "measure", **cmd})
        out: dict = {}
        while True:
            msg = self.read()
            if msg["type"] == "done":
                return out, msg
            assert msg["type"] in ("result", "error"), msg
            assert msg.get("id") not in out, f"two lines for {msg.get('id')}"
            out[msg.get("id")] = msg

    def close(self) -> int:
        if self.proc.poll() is None:
            self.proc.stdin.close()
        return self.proc.wait(timeout=TIMEOUT_S)


def check_result(res: dict, n: int, rounds: int) -> None:
    assert res["type"] == "result", res
    assert res["n"] == n and len(res["samples_ms"]) == n
    assert len(res["round_medians_ms"]) == rounds
    assert res["median_ms"] == pytest.approx(statistics.median(res["round_medians_ms"]), abs=2e-6)
    assert all(s > 0 for s in res["samples_ms"])
    assert 0 < res["min_ms"] <= res["median_ms"]
    assert res["min_ms"] == min(res["samples_ms"])
    assert res["std_ms"] >= 0 and res["mean_ms"] > 0


# --------------------------------------------------------------------------- models


def _torch_modules() -> dict:
    import torch
    from torch import nn

    torch.manual_seed(0)
    return {
        "conv": (
            nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()),
            (1, 8, 16, 16),
        ),
        "dw": (nn.Conv2d(16, 16, 3, padding=1, groups=16), (1, 16, 16, 16)),
        "linear": (nn.Linear(64, 32), (1, 64)),
        "big": (nn.Conv2d(256, 256, 1), (1, 256, 56, 56)),
    }


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory, single_thread) -> dict:
    import torch

    out = tmp_path_factory.mktemp("onnx")
    paths = {}
    for name, (module, shape) in _torch_modules().items():
        path = out / f"{name}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(), (torch.randn(shape),), str(path), dynamo=False, opset_version=17
            )
        paths[name] = str(path)
    return paths


@pytest.fixture(scope="module")
def ir_models(tmp_path_factory, single_thread) -> dict:
    import openvino as ov
    import torch

    out = tmp_path_factory.mktemp("ir")
    paths = {}
    for name, (module, shape) in _torch_modules().items():
        if name == "big":
            continue
        model = ov.convert_model(module.eval(), example_input=torch.randn(shape), input=[shape])
        ov.save_model(model, str(out / f"{name}.xml"), compress_to_fp16=False)
        paths[name] = str(out / f"{name}.xml")
    return paths


def build_tflite(depthwise: bool = False, int8: bool = False, size: int = 16, ch: int = 8) -> bytes:
    """A one-op (depthwise) conv .tflite written straight from LiteRT's flatbuffer schema, so the
    LiteRT path is testable without TensorFlow or litert-torch."""
    import flatbuffers
    import numpy as np
    from ai_edge_litert import schema_py_generated as s

    rng = np.random.default_rng(0)
    buffers = [s.BufferT()]

    def buffer(arr=None) -> int:
        b = s.BufferT()
        if arr is not None:
            b.data = np.frombuffer(arr.tobytes(), np.uint8).tolist()
        buffers.append(b)
        return len(buffers) - 1

    def tensor(name, shape, ttype, buf, scale=None, qdim=0):
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name, list(shape), ttype, buf
        if scale is not None:
            q = s.QuantizationParametersT()
            q.scale, q.zeroPoint, q.quantizedDimension = list(scale), [0] * len(scale), qdim
            t.quantization = q
        return t

    cout = ch if depthwise else 2 * ch
    wshape = (1, 3, 3, ch) if depthwise else (cout, 3, 3, ch)
    act = s.TensorType.INT8 if int8 else s.TensorType.FLOAT32
    if int8:
        w = rng.integers(-127, 127, wshape, dtype=np.int8)
        b = np.zeros(cout, np.int32)
        tensors = [
            tensor("in", (1, size, size, ch), act, buffer(), [0.05]),
            tensor("w", wshape, s.TensorType.INT8, buffer(w), [0.01] * cout, 3 if depthwise else 0),
            tensor("b", (cout,), s.TensorType.INT32, buffer(b), [0.0005] * cout),
            tensor("out", (1, size, size, cout), act, buffer(), [0.1]),
        ]
    else:
        w = rng.standard_normal(wshape).astype(np.float32)
        b = np.zeros(cout, np.float32)
        tensors = [
            tensor("in", (1, size, size, ch), act, buffer()),
            tensor("w", wshape, act, buffer(w)),
            tensor("b", (cout,), act, buffer(b)),
            tensor("out", (1, size, size, cout), act, buffer()),
        ]
    code = s.OperatorCodeT()
    op = s.OperatorT()
    if depthwise:
        code.builtinCode = s.BuiltinOperator.DEPTHWISE_CONV_2D
        opts = s.DepthwiseConv2DOptionsT()
        opts.depthMultiplier = 1
        op.builtinOptionsType = s.BuiltinOptions.DepthwiseConv2DOptions
    else:
        code.builtinCode = s.BuiltinOperator.CONV_2D
        opts = s.Conv2DOptionsT()
        op.builtinOptionsType = s.BuiltinOptions.Conv2DOptions
    code.deprecatedBuiltinCode, code.version = code.builtinCode, 1
    opts.padding, opts.strideW, opts.strideH = s.Padding.SAME, 1, 1
    opts.dilationWFactor = opts.dilationHFactor = 1
    opts.fusedActivationFunction = s.ActivationFunctionType.RELU
    op.opcodeIndex, op.inputs, op.outputs, op.builtinOptions = 0, [0, 1, 2], [3], opts
    graph = s.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators = tensors, [0], [3], [op]
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], [graph], buffers
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@pytest.fixture(scope="module")
def tflite_models(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("tflite")
    paths = {}
    for name, kwargs in {"conv": {}, "dw_int8": {"depthwise": True, "int8": True}}.items():
        path = out / f"{name}.tflite"
        path.write_bytes(build_tflite(**kwargs))
        paths[name] = str(path)
    return paths


FAKE_DELEGATE_C = r"""
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
/* A TfLiteDelegate whose Prepare claims no nodes: loads fine, delegates nothing. */
typedef struct { void* data; int (*prepare)(void*, void*); void* copy_from; void* copy_to;
                 void* free_handle; int64_t flags; void* opaque_builder; char pad[256]; } Delegate;
static int prepare(void* context, void* delegate) { (void)context; (void)delegate; return 0; }
Delegate* tflite_plugin_create_delegate(char** keys, char** values, size_t n,
                                        void (*report)(const char*)) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(keys[i], "fail") == 0 && strcmp(values[i], "1") == 0) {
      report("fake delegate asked to fail");
      return NULL;
    }
  Delegate* d = calloc(1, sizeof(Delegate));
  d->prepare = prepare;
  return d;
}
void tflite_plugin_destroy_delegate(Delegate* d) { free(d); }
"""


@pytest.fixture(scope="module")
def fake_delegate(tmp_path_factory) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build a stand-in delegate library")
    out = tmp_path_factory.mktemp("delegate")
    (out / "fake.c").write_text(FAKE_DELEGATE_C)
    lib = out / "libFakeDelegate.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(out / "fake.c")], check=True)
    return str(lib)


@pytest.fixture(scope="module")
def agent():
    a = Agent()
    yield a
    a.close()


# --------------------------------------------------------------------------- tests


def test_agent_source_is_python38() -> None:
    tree = ast.parse(AGENT.read_text(), feature_version=(3, 8))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    # Top-level imports may only be stdlib; numpy and the runtimes are imported lazily.
    assert not imported & {"hurricane", "devices", "profilers", "torch"}
    top = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    assert top <= set(sys.stdlib_module_names)


def _python38() -> str | None:
    candidates = [shutil.which("python3.8")] + sorted(
        glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3.8"))
    )
    for exe in filter(None, candidates):
        try:
            out = subprocess.run(
                [exe, "-c", "import sys; print(sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == "(3, 8)":
            return exe
    return None


@pytest.mark.parametrize("where", ["python3.8", "no-site-packages"])
def test_agent_without_runtimes(where: str, tmp_path) -> None:
    """Stdlib only (a real 3.8 if there is one): hello works and every item of a measure fails
    with 'not installed', one line each."""
    if where == "python3.8":
        exe = _python38()
        if exe is None:
            pytest.skip("no Python 3.8 interpreter here")
        a = Agent(python=exe, flags=("-S",))
    else:
        a = Agent(flags=("-S",))
    hello = a.ask({"cmd": "hello"})
    if where == "python3.8":
        assert hello["python"].startswith("3.8.")
    assert hello["fingerprint"]["runtimes"] == {}
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    for runtime in ("onnxruntime", "openvino", "litert"):
        out, done = a.measure(
            runtime=runtime, items=[{"id": "a", "path": str(model)}, {"id": "b", "path": "/x"}]
        )
        assert done["n_err"] == 2 and done["n_ok"] == 0
        assert "not installed" in out["a"]["error"] and "not installed" in out["b"]["error"]
    assert a.ask({"cmd": "quit"}) == {"type": "bye"}
    assert a.close() == 0


def test_hello(agent: Agent) -> None:
    import onnxruntime
    import openvino

    hello = agent.ask({"cmd": "hello"})
    assert hello["type"] == "hello" and hello["agent_version"] == 2
    assert hello["python"] == platform.python_version()
    fp = hello["fingerprint"]
    assert fp["cpu_model"] and isinstance(fp["cpu_model"], str)
    assert fp["cores"] == os.cpu_count()
    assert fp["machine"] == platform.machine() and fp["os"] and fp["hostname"]
    assert isinstance(fp["governors"], list)
    assert fp["runtimes"]["onnxruntime"] == onnxruntime.__version__
    assert fp["runtimes"]["openvino"].startswith(openvino.__version__.split("-")[0])
    assert "CPUExecutionProvider" in fp["onnxruntime_providers"]
    assert "CPU" in fp["openvino_devices"]


def test_onnxruntime_interleaved(agent: Agent, onnx_models: dict) -> None:
    ids = ["conv", "dw", "linear"]
    out, done = agent.measure(
        runtime="onnxruntime",
        options={"threads": 1, "debug_order": True},
        items=[{"id": i, "path": onnx_models[i]} for i in ids],
        warmup=2,
        rounds=3,
        runs=5,
    )
    assert done["n_ok"] == 3 and done["n_err"] == 0
    for i in ids:
        res = out[i]
        check_result(res, n=15, rounds=3)
        assert res["runtime"] == "onnxruntime" and res["threads"] == 1
        assert res["delegate"] == "CPUExecutionProvider"
    assert [(i["shape"], i["dtype"]) for i in out["linear"]["inputs"]] == [([1, 64], "float32")]
    order = done["order"]
    assert len(order) == 3 and all(sorted(r) == sorted(ids) for r in order)
    assert any(r != order[0] for r in order[1:]), "every round ran the items in the same order"


def test_bigger_model_is_slower(agent: Agent, onnx_models: dict) -> None:
    out, _ = agent.measure(
        runtime="onnxruntime",
        options={"threads": 1},
        items=[{"id": i, "path": onnx_models[i]} for i in ("conv", "big")],
        warmup=2,
        rounds=3,
        runs=3,
    )
    assert out["big"]["median_ms"] > 2 * out["conv"]["median_ms"]


def test_openvino(agent: Agent, ir_models: dict) -> None:
    items = [{"id": i, "path": p} for i, p in ir_models.items()]
    out, done = agent.measure(
        runtime="openvino",
        options={"threads": 1, "device": "CPU"},
        items=items,
        warmup=2,
        rounds=2,
        runs=3,
    )
    assert done["n_ok"] == len(items), out
    for res in out.values():
        check_result(res, n=6, rounds=2)
        assert res["runtime"] == "openvino" and res["device"] == "CPU"
        assert res["execution_devices"] == ["CPU"] and res["threads"] == 1
    assert out["conv"]["inputs"][0]["shape"] == [1, 8, 16, 16]
    out, done = agent.measure(
        runtime="openvino",
        options={"precision_hint": "f16"},
        items=items[:1],
        warmup=1,
        rounds=1,
        runs=2,
    )
    res = out[items[0]["id"]]
    check_result(res, n=2, rounds=1)
    # What the CPU really runs is reported: bf16 where it has AMX or AVX512-BF16.
    assert res["precision"] in ("f16", "f32", "bf16")
    # The deployment knobs reach the compiled model, as OpenVINO reports them back.
    got = {}
    for hint, streams in (("LATENCY", 1), ("THROUGHPUT", 2)):
        out, _ = agent.measure(
            runtime="openvino",
            options={"performance_hint": hint, "streams": streams},
            items=items[:1],
            warmup=1,
            rounds=1,
            runs=2,
        )
        res = out[items[0]["id"]]
        got[hint] = (res["performance_hint"], res["streams"])
    assert got == {"LATENCY": ("LATENCY", 1), "THROUGHPUT": ("THROUGHPUT", 2)}


def test_openvino_ir_without_weights(agent: Agent, ir_models: dict, tmp_path) -> None:
    xml = tmp_path / "alone.xml"
    xml.write_text(Path(ir_models["conv"]).read_text())
    out, done = agent.measure(runtime="openvino", items=[{"id": "a", "path": str(xml)}])
    assert done["n_err"] == 1 and "alone.bin" in out["a"]["error"]


def test_openvino_dynamic_shape_needs_shapes(agent: Agent, tmp_path, single_thread) -> None:
    import openvino as ov
    import torch

    module, shape = _torch_modules()["conv"]
    path = tmp_path / "dyn.xml"
    ov.save_model(ov.convert_model(module.eval(), example_input=torch.randn(shape)), str(path))
    out, _ = agent.measure(
        runtime="openvino",
        items=[
            {"id": "dyn", "path": str(path)},
            {"id": "fixed", "path": str(path), "shapes": [[1, 8, 20, 20]]},
        ],
        warmup=1,
        rounds=1,
        runs=1,
    )
    assert out["dyn"]["type"] == "error" and "dynamic shape" in out["dyn"]["error"]
    assert out["fixed"]["inputs"][0]["shape"] == [1, 8, 20, 20]


def test_litert(agent: Agent, tflite_models: dict) -> None:
    items = [{"id": i, "path": p} for i, p in tflite_models.items()]
    for xnnpack, name in ((True, "xnnpack"), (False, "builtin")):
        out, done = agent.measure(
            runtime="litert",
            options={"threads": 1, "xnnpack": xnnpack},
            items=items,
            warmup=2,
            rounds=2,
            runs=3,
        )
        assert done["n_ok"] == 2, out
        for res in out.values():
            check_result(res, n=6, rounds=2)
            assert res["delegate"] == name and res["threads"] == 1
    assert out["dw_int8"]["inputs"] == [{"name": "in", "shape": [1, 16, 16, 8], "dtype": "int8"}]


def test_item_failures_do_not_stop_the_batch(agent: Agent, onnx_models: dict, tmp_path) -> None:
    corrupt = tmp_path / "x.onnx"
    corrupt.write_bytes(os.urandom(2048))
    out, done = agent.measure(
        runtime="onnxruntime",
        items=[
            {"id": "bad", "path": str(corrupt)},
            {"id": "good", "path": onnx_models["linear"]},
            {"id": "missing", "path": str(tmp_path / "nope.onnx")},
            {"path": onnx_models["linear"]},
        ],
        warmup=1,
        rounds=2,
        runs=2,
    )
    assert (done["n_ok"], done["n_err"]) == (1, 3)
    check_result(out["good"], n=4, rounds=2)
    assert out["bad"]["type"] == "error" and "\n" not in out["bad"]["error"]
    assert "not found" in out["missing"]["error"]
    assert "id" in out["#3"]["error"]  # an item without an id is named by its position


def test_duplicate_id(agent: Agent, onnx_models: dict) -> None:
    item = {"id": "a", "path": onnx_models["linear"]}
    agent.send({"cmd": "measure", "runtime": "onnxruntime", "items": [item, item], "rounds": 1})
    lines = [agent.read() for _ in range(3)]
    assert lines[0]["type"] == "error" and "duplicate" in lines[0]["error"]
    assert lines[1]["type"] == "result" and lines[1]["id"] == "a"
    assert lines[2] == {"type": "done", "n_ok": 1, "n_err": 1}


def test_litert_missing_model(agent: Agent) -> None:
    out, done = agent.measure(runtime="litert", items=[{"id": "a", "path": "/nonexistent.tflite"}])
    assert done["n_err"] == 1 and "/nonexistent.tflite" in out["a"]["error"]


@pytest.mark.parametrize(
    "cmd, expected",
    [
        ({"runtime": "tensorrt"}, "unknown runtime 'tensorrt'"),
        ({"runtime": "onnxruntime", "options": {"thread": 2}}, "unknown option 'thread'"),
        ({"runtime": "onnxruntime", "options": {"threads": 0}}, "threads"),
        ({"runtime": "onnxruntime", "rounds": 0}, "rounds"),
        ({"runtime": "litert", "options": {"delegate": {"lib": "x"}}}, "library"),
    ],
)
def test_bad_request_fails_every_item(agent: Agent, onnx_models: dict, cmd, expected) -> None:
    items = [{"id": "a", "path": onnx_models["linear"]}, {"id": "b", "path": onnx_models["dw"]}]
    out, done = agent.measure(items=items, **cmd)
    assert (done["n_ok"], done["n_err"]) == (0, 2)
    assert all(expected in out[i]["error"] for i in ("a", "b"))


def test_onnxruntime_missing_provider(agent: Agent, onnx_models: dict) -> None:
    items = [{"id": "a", "path": onnx_models["linear"]}]
    providers = ["QNNExecutionProvider", "CPUExecutionProvider"]
    out, _ = agent.measure(runtime="onnxruntime", options={"providers": providers}, items=items)
    assert "QNNExecutionProvider" in out["a"]["error"]
    options = {"providers": providers, "allow_cpu_fallback": True}
    out, _ = agent.measure(
        runtime="onnxruntime", options=options, items=items, warmup=1, rounds=1, runs=1
    )
    assert out["a"]["delegate"] == "CPUExecutionProvider"
    assert "QNNExecutionProvider" in out["a"]["warning"]


def test_litert_missing_delegate_library(agent: Agent, tflite_models: dict) -> None:
    lib = "/nonexistent/libQnnTFLiteDelegate.so"
    items = [{"id": i, "path": p} for i, p in tflite_models.items()]
    out, done = agent.measure(runtime="litert", options={"delegate": {"library": lib}}, items=items)
    assert (done["n_ok"], done["n_err"]) == (0, 2)
    for res in out.values():
        assert res["type"] == "error" and lib in res["error"] and "spec" in res["error"]
    delegate = {"library": lib, "allow_cpu_fallback": True}
    out, done = agent.measure(
        runtime="litert", options={"delegate": delegate}, items=items, warmup=1, rounds=1, runs=2
    )
    assert done["n_ok"] == 2
    for res in out.values():
        check_result(res, n=2, rounds=1)
        assert res["delegate"] is None and lib in res["warning"]


def test_litert_external_delegate(agent: Agent, tflite_models: dict, fake_delegate: str) -> None:
    """A delegate that loads but takes no ops would silently time the CPU: an error, unless
    allow_cpu_fallback; a delegate whose create call fails is an error naming the library."""
    items = [{"id": "conv", "path": tflite_models["conv"]}]
    out, _ = agent.measure(
        runtime="litert", options={"delegate": {"library": fake_delegate}}, items=items
    )
    assert "libFakeDelegate.so took none" in out["conv"]["error"]
    failing = {"library": fake_delegate, "options": {"fail": 1}}
    out, _ = agent.measure(runtime="litert", options={"delegate": failing}, items=items)
    assert fake_delegate in out["conv"]["error"] and "asked to fail" in out["conv"]["error"]
    fallback = {"library": fake_delegate, "allow_cpu_fallback": True}
    out, _ = agent.measure(
        runtime="litert",
        options={"delegate": fallback, "xnnpack": False},
        items=items,
        warmup=1,
        rounds=1,
        runs=2,
    )
    res = out["conv"]
    check_result(res, n=2, rounds=1)
    assert res["delegate"] is None and res["delegate_partitions"] == 0 and res["warning"]


def test_protocol_errors_keep_the_agent_alive(agent: Agent) -> None:
    agent.send("{not json")
    assert agent.read()["type"] == "error"
    agent.send("[1, 2]")
    assert agent.read()["type"] == "error"
    reply = agent.ask({"cmd": "dance"})
    assert reply["type"] == "error" and "dance" in reply["error"]
    reply = agent.ask({"cmd": "measure", "runtime": "onnxruntime"})
    assert reply["type"] == "error" and "items" in reply["error"]
    assert agent.read() == {"type": "done", "n_ok": 0, "n_err": 0}
    assert agent.ask({"cmd": "hello"})["type"] == "hello"


def test_quit_and_eof() -> None:
    a = Agent()
    assert a.ask({"cmd": "quit"}) == {"type": "bye"}
    assert a.close() == 0
    b = Agent()
    assert b.close() == 0  # EOF on stdin


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_affinity() -> None:
    a = Agent("--affinity", "0")
    assert a.ask({"cmd": "hello"})["fingerprint"]["affinity"] == [0]
    a.close()
    bad = Agent("--affinity", "zero")
    assert bad.close() == 2


def test_min_round_ms_adds_runs_to_short_ops(agent: Agent, onnx_models: dict) -> None:
    out, done = agent.measure(
        runtime="onnxruntime",
        options={"threads": 1},
        items=[{"id": "linear", "path": onnx_models["linear"]}],
        warmup=1,
        rounds=3,
        runs=2,
        min_round_ms=15,
        max_runs=5000,
    )
    res = out["linear"]
    assert done["n_ok"] == 1
    per_round = res["runs_per_round"]
    assert len(per_round) == 3 and sum(per_round) == res["n"] == len(res["samples_ms"])
    assert all(n > 2 for n in per_round)  # a ~0.01 ms op needs many runs to fill 15 ms
    start = 0
    for n in per_round:  # each round stopped once it had 15 ms of timed runs (or hit the cap)
        assert sum(res["samples_ms"][start : start + n]) >= 15 or n == 5000
        start += n
