"""Output verification on the device: the agent's infer command, with real converters, real
runtimes, a real agent process (locally and behind a real sshd), compared with PyTorch."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from devices.artifacts import Artifact, ArtifactCache
from devices.spec import DeviceSpec, load_device, parse_device
from devices.transport import TransportError
from hurricane.space_file import load_space
from hurricane.subnet import build_subnet
from profilers.session import AgentCrashed, AgentSession, InferenceFailed
from tests.sshd import SSHServer

TINY = Path(__file__).parent / "spaces" / "tiny.toml"
ARCH = "mb_k3_e3-ds_k3-shuffle_k3"  # an inverted residual, a depthwise-separable, a shuffle

# Tolerances on max |device - torch| / max |torch| over the batch, from what was measured here
# (this network, seeds 0/1, batch of 4): LiteRT fp32 3.4e-7, ONNX Runtime fp32 2.3e-7 (float
# rounding only, so 1e-5 still fails on any real mistake); OpenVINO FP16 IR 2.7e-3 (weights
# rounded to fp16); LiteRT full int8 0.14 (mostly logits clipped to the calibrated range; see
# test_infer_litert_full_int8).
REL_TOL = {("litert", "fp32"): 1e-5, ("onnxruntime", "fp32"): 1e-5, ("openvino", "fp16"): 1e-2}
INT8_REL_TOL = 0.2


@pytest.fixture(scope="module")
def net(single_thread, tmp_path_factory):
    """(module, batch of 4 normalised-image-like samples, torch's outputs, artifact cache)."""
    torch.manual_seed(0)
    module = build_subnet(load_space(TINY), ARCH).eval()
    gen = torch.Generator().manual_seed(1)
    batch = torch.randn(4, 1, 28, 28, generator=gen)
    with torch.no_grad():
        ref = module(batch).numpy()
    return module, batch, ref, ArtifactCache(tmp_path_factory.mktemp("artifacts"))


def artifact(net, runtime: str, precision: str) -> Artifact:
    module, batch, _, cache = net
    calibration = None
    if precision == "int8":  # the same distribution as the samples, none of them
        calibration = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    return cache.get(module, batch[:1], runtime, precision, calibration=calibration)


def rel_error(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def int8_spec() -> DeviceSpec:
    runtime = {"name": "litert", "precision": "int8"}
    return parse_device({"name": "local-litert-int8", "kind": "cpu", "runtime": runtime})


@pytest.mark.parametrize(
    "device,runtime,precision",
    [
        ("local-litert", "litert", "fp32"),
        ("local-onnxruntime", "onnxruntime", "fp32"),
        ("local-openvino", "openvino", "fp16"),
    ],
)
def test_infer_matches_torch(net, device: str, runtime: str, precision: str) -> None:
    _, batch, ref, _ = net
    art = artifact(net, runtime, precision)
    with AgentSession(load_device(device)) as session:
        out = session.infer("net", art, batch.numpy())
        reply = session.last_infer
    assert out.shape == ref.shape == (4, 10) and out.dtype == np.float32
    assert rel_error(out, ref) < REL_TOL[runtime, precision]
    assert (out.argmax(1) == ref.argmax(1)).all()
    assert reply["runtime"] == runtime and reply["runtime_version"]
    assert reply["runs"] == 4  # a batch-1 model: one sample a run
    assert reply["seconds"] > 0
    # The samples must not have been mixed up: each output is its own sample's.
    assert np.abs(out[0] - ref[1]).max() > 10 * np.abs(out[0] - ref[0]).max()


def test_infer_litert_full_int8(net) -> None:
    """The quantized model takes and gives int8 tensors; the agent scales floats in and out.
    Checked against the host's own LiteRT on the same file (same library: bit-identical) and
    against torch (bounded error, same classes)."""
    from ai_edge_litert.interpreter import Interpreter

    _, batch, ref, _ = net
    art = artifact(net, "litert", "int8")
    with AgentSession(int8_spec()) as session:
        out = session.infer("net-int8", art, batch.numpy())
        reply = session.last_infer
    assert reply["inputs"][0]["dtype"] == "int8"  # this test covers the quantized I/O path

    it = Interpreter(model_path=str(art.path))
    it.allocate_tensors()
    (inp,), (outp,) = it.get_input_details(), it.get_output_details()
    (in_scale, in_zero), (out_scale, out_zero) = inp["quantization"], outp["quantization"]
    assert inp["dtype"] == outp["dtype"] == np.int8 and in_scale > 0 and out_scale > 0
    host = []
    for x in batch.numpy():
        q = np.clip(np.round(x[None] / in_scale) + in_zero, -128, 127).astype(np.int8)
        it.set_tensor(inp["index"], q)
        it.invoke()
        host.append((it.get_tensor(outp["index"]).astype(np.float32) - out_zero) * out_scale)
    np.testing.assert_array_equal(out, np.concatenate(host))

    # Measured: max abs error 0.147 with max |torch| 1.05. Most of it is clipping: the
    # calibrated output range is [-0.905, 0.634] and 5 of the 40 logits lie outside it; inside
    # it the error is 0.031, about 5 output steps of 0.0060. Torch's top-2 margins are
    # 0.25-0.37, so the classes must agree.
    assert out.shape == (4, 10)
    assert rel_error(out, ref) < INT8_REL_TOL
    lo, hi = (-128 - out_zero) * out_scale, (127 - out_zero) * out_scale
    inside = (ref > lo) & (ref < hi)
    assert inside.sum() >= 30 and np.abs(out - ref)[inside].max() < 12 * out_scale
    assert (out.argmax(1) == ref.argmax(1)).all()


def board(server: SSHServer, runtime: str, **top: str) -> DeviceSpec:
    """A device spec for the test sshd; ``top`` overrides top-level fields."""
    return parse_device(
        {
            "name": "board",
            "kind": "mobile-cpu",
            "python": sys.executable,
            **top,
            "transport": {
                "type": "ssh",
                "host": server.host,
                "port": server.port,
                "user": server.user,
                "key_file": str(server.client_key),
                "known_hosts": str(server.known_hosts),
                "connect_timeout_s": 5.0,
            },
            "runtime": {"name": runtime},
        }
    )


def test_infer_over_ssh(net, tmp_path: Path) -> None:
    """A board reached through a real OpenSSH server: artifact over SFTP, agent over exec."""
    _, batch, ref, _ = net
    art = artifact(net, "litert", "fp32")
    with SSHServer() as server:
        spec = board(server, "litert")
        with AgentSession(spec) as session:
            assert not session.spec.is_local
            out = session.infer("net", art, batch.numpy())
            assert session.last_infer["delegate"] == "xnnpack"
            # Loopback: the device's copy is on this disk, and must be the artifact itself.
            shipped = Path(session.upload(art))
            assert shipped.parent != art.path.parent
            assert shipped.read_bytes() == art.path.read_bytes()
    assert rel_error(out, ref) < REL_TOL["litert", "fp32"]


def test_a_failed_agent_start_leaves_no_work_dir_on_the_device(tmp_path: Path) -> None:
    remote = tmp_path / "device"
    remote.mkdir()
    with SSHServer() as server:
        spec = board(
            server, "onnxruntime", python=str(tmp_path / "no-such-python"), workdir=str(remote)
        )
        with pytest.raises(TransportError) as exc:
            with AgentSession(spec):
                pass
    assert "\n" not in str(exc.value)
    assert list(remote.iterdir()) == []  # the hurricane-run-* folder went with the failure


def test_wrong_input_shape_is_an_error_and_the_agent_keeps_serving(net) -> None:
    _, batch, ref, _ = net
    art = artifact(net, "onnxruntime", "fp32")
    with AgentSession(load_device("local-onnxruntime")) as session:
        proc = session.proc
        wrong = np.zeros((4, 1, 32, 32), dtype=np.float32)
        with pytest.raises(InferenceFailed) as info:
            session.infer("too-big", art, wrong)
        message = str(info.value)
        assert "\n" not in message
        assert "[4, 1, 32, 32]" in message and "[1, 1, 28, 28]" in message
        assert "send [N, 1, 28, 28]" in message
        with pytest.raises(InferenceFailed, match=r"\[N, 1, 28, 28\]"):
            session.infer("no-channel-axis", art, wrong[:, 0])
        out = session.infer("after", art, batch.numpy())
        assert session.proc is proc and proc.alive
    assert rel_error(out, ref) < REL_TOL["onnxruntime", "fp32"]


def test_malformed_infer_requests_get_one_line_errors(net) -> None:
    """Straight on the protocol: each bad request gets an error line naming its id and the
    problem, and the agent then answers a good one."""
    _, batch, ref, _ = net
    art = artifact(net, "onnxruntime", "fp32")
    spec = load_device("local-onnxruntime")
    with AgentSession(spec) as session:
        path = session.upload(art)
        good = {
            "cmd": "infer",
            "runtime": "onnxruntime",
            "options": spec.runtime.agent_options(),
            "path": path,
            "input": {
                "shape": [1, 1, 28, 28],
                "dtype": "float32",
                "data": base64.b64encode(batch[:1].numpy().astype("<f4").tobytes()).decode(),
            },
        }
        bad = {
            "bad-b64": ({"data": "not base64!"}, "not valid base64"),
            "short": ({"data": base64.b64encode(b"\0" * 8).decode()}, "holds 8 bytes"),
            "f64": ({"dtype": "float64"}, "must be 'float32'"),
            "no-shape": ({"shape": []}, "'shape' must be a list of positive integers"),
        }
        for item_id, (change, expected) in bad.items():
            request = {**good, "id": item_id, "input": {**good["input"], **change}}
            session.proc.send(json.dumps(request))
            reply = session._read()
            assert reply["type"] == "error" and reply["id"] == item_id, reply
            assert expected in reply["error"] and "\n" not in reply["error"]
        session.proc.send(json.dumps({**good, "id": "gone", "path": path + ".missing"}))
        reply = session._read()
        assert reply["id"] == "gone" and "not found on the device" in reply["error"]
        session.proc.send(json.dumps({**good, "id": "ok"}))
        reply = session._read()
    assert reply["type"] == "outputs" and reply["id"] == "ok"
    assert reply["output"]["shape"] == [1, 10] and reply["output"]["dtype"] == "float32"
    out = np.frombuffer(base64.b64decode(reply["output"]["data"]), dtype="<f4").reshape(1, 10)
    assert rel_error(out, ref[:1]) < REL_TOL["onnxruntime", "fp32"]


def test_model_with_a_batch_of_two_runs_twice(net) -> None:
    module, batch, ref, cache = net
    art = cache.get(module, batch[:2], "onnxruntime", "fp32")
    with AgentSession(load_device("local-onnxruntime")) as session:
        out = session.infer("b2", art, batch.numpy())
        assert session.last_infer["runs"] == 2
        with pytest.raises(InferenceFailed, match="N a multiple of 2"):
            session.infer("odd", art, batch[:3].numpy())
    assert rel_error(out, ref) < REL_TOL["onnxruntime", "fp32"]


def test_agent_dying_during_infer_is_agent_crashed(net, monkeypatch) -> None:
    """A runtime that segfaults on the model (injected in the agent): the host says so."""
    _, batch, _, _ = net
    art = artifact(net, "onnxruntime", "fp32")
    monkeypatch.setenv("HURRICANE_AGENT_CRASH_ON", "victim")
    with AgentSession(load_device("local-onnxruntime")) as session:
        with pytest.raises(AgentCrashed, match="ended while running victim") as info:
            session.infer("victim", art, batch.numpy())
    assert info.value.pending == ["victim"]
