"""Host-side converters and the content-addressed artifact cache, with the real runtimes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import openvino as ov
import pytest
import torch
from torch import nn

from devices.artifacts import ArtifactCache
from devices.convert import ConversionError
from hurricane.ops import build_op


def block(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_op("mb_k3_e3_se", 8, 12, 2).eval()


def test_onnx_matches_torch_and_is_cached(tmp_path: Path, single_thread) -> None:
    cache = ArtifactCache(tmp_path)
    m, x = block(), torch.randn(1, 8, 14, 14)
    art = cache.get(m, x, "onnxruntime")
    assert art.path.suffix == ".onnx" and art.path.exists()
    sess = ort.InferenceSession(str(art.path))
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, m(x).detach().numpy(), atol=1e-5)
    mtime = art.path.stat().st_mtime_ns
    again = ArtifactCache(tmp_path).get(block(), x, "onnxruntime")  # same content, new cache object
    assert again == art and art.path.stat().st_mtime_ns == mtime
    assert (cache.hits, cache.misses) == (0, 1)


def test_openvino_ir_fp32_and_fp16(tmp_path: Path, single_thread) -> None:
    cache = ArtifactCache(tmp_path)
    m, x = block(), torch.randn(1, 8, 14, 14)
    fp32 = cache.get(m, x, "openvino", "fp32")
    fp16 = cache.get(m, x, "openvino", "fp16")
    assert fp32.key != fp16.key and all(f.exists() for f in fp32.files + fp16.files)
    assert (
        fp16.path.with_suffix(".bin").stat().st_size < fp32.path.with_suffix(".bin").stat().st_size
    )
    # fp32 asked for explicitly: on a CPU with bf16 units the plugin would otherwise use them.
    compiled = ov.Core().compile_model(str(fp32.path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled(x.numpy())[0]
    np.testing.assert_allclose(got, m(x).detach().numpy(), atol=1e-4)


def test_key_follows_content(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    x = torch.randn(1, 8, 14, 14)
    a = cache.get(block(0), x, "onnxruntime")
    b = cache.get(block(1), x, "onnxruntime")  # other weights
    c = cache.get(block(0), torch.randn(1, 8, 16, 16), "onnxruntime")  # other shape
    assert len({a.key, b.key, c.key}) == 3 and cache.misses == 3


def test_conversion_errors_are_one_line(tmp_path: Path) -> None:
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("this block cannot be traced\nsecond line")

    cache = ArtifactCache(tmp_path)
    with pytest.raises(ConversionError) as err:
        cache.get(Broken(), torch.randn(1, 3, 4, 4), "onnxruntime")
    assert "\n" not in str(err.value) and "cannot be traced" in str(err.value)
    assert not list(tmp_path.rglob("*.onnx"))  # nothing half-written left behind
    with pytest.raises(ConversionError, match="unknown runtime"):
        cache.get(block(), torch.randn(1, 8, 14, 14), "tensorrt")


def test_openvino_int8_through_nncf(tmp_path: Path, single_thread) -> None:
    cache = ArtifactCache(tmp_path)
    m, x = block(), torch.randn(1, 8, 14, 14)
    fp32 = cache.get(m, x, "openvino", "fp32")
    int8 = cache.get(m, x, "openvino", "int8", calibration=torch.randn(4, 8, 14, 14))
    model = ov.Core().read_model(str(int8.path))
    assert any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
    assert not any(
        op.get_type_name() == "FakeQuantize"
        for op in ov.Core().read_model(str(fp32.path)).get_ops()
    )
    got = ov.Core().compile_model(model, "CPU")(x.numpy())[0]
    ref = m(x).detach().numpy()
    assert np.abs(got - ref).max() < 0.25 * np.abs(ref).max()  # int8: close, not exact


def test_conversion_workers_keep_converter_chatter_off_the_terminal(tmp_path: Path) -> None:
    """Spawned LiteRT conversion workers import litert-torch, whose import printed torchao's
    "Failed to load" lines, torch pytree deprecations and absl banners on the user's terminal."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from devices.artifacts import ArtifactCache, convert_all
        from hurricane.space_file import load_space
        from hurricane.subnet import instance_module
        if __name__ == "__main__":
            space = load_space({str(Path(__file__).parent / "spaces" / "tiny.toml")!r})
            insts = space.op_instances()[:4]
            cache = ArtifactCache(Path({str(tmp_path)!r}))
            errors = convert_all(instance_module, insts, [i.key for i in insts], "litert",
                                 "fp32", cache, workers=2, progress=False)
            print("errors", len(errors))
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().endswith("errors 0")
    assert run.stderr.strip() == "", run.stderr[-2000:]
    assert len(list(tmp_path.rglob("*.tflite"))) == 4
