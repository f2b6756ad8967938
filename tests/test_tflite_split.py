"""Chunked LiteRT conversion: one converter call, cut into per-block models that match
separate conversion op for op and output for output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ai_edge_litert.interpreter import Interpreter
from torch import nn

from devices.artifacts import ArtifactCache
from devices.convert import ConversionError
from devices.tflite_split import opcode_names
from hurricane.lutkeys import OpInstance
from hurricane.subnet import instance_module

INSTANCES = [
    OpInstance("mb_k3_e3_se", 8, 12, 14, 14, 2, "relu"),
    OpInstance("shuffle_k3", 12, 12, 7, 7, 1, "hswish"),
    OpInstance("ds_k5", 12, 16, 7, 7, 1, "relu6"),
    OpInstance("skip", 16, 16, 4, 4, 1, "relu"),
]


def run(path: Path, x: torch.Tensor) -> np.ndarray:
    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x.numpy())
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def test_chunk_matches_separate_conversion(tmp_path: Path, single_thread) -> None:
    items = [instance_module(i) for i in INSTANCES]
    chunked = ArtifactCache(tmp_path / "chunked").get_many(items, "litert")
    assert all(not isinstance(a, ConversionError) for a in chunked)
    separate = ArtifactCache(tmp_path / "separate")
    for (module, x), art in zip(items[:2], chunked[:2]):
        alone = separate.get(module, x, "litert")
        assert art.key == alone.key  # same content, same cache name
        assert opcode_names(art.path.read_bytes()) == opcode_names(alone.path.read_bytes())
        np.testing.assert_allclose(run(art.path, x), run(alone.path, x), atol=1e-5)
    for (module, x), art in zip(items, chunked):
        np.testing.assert_allclose(run(art.path, x), module(x).detach().numpy(), atol=1e-4)
    again = ArtifactCache(tmp_path / "chunked")
    assert again.get_many(items, "litert") == chunked and again.hits == len(items)


def test_a_bad_block_fails_alone(tmp_path: Path) -> None:
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("cannot export this")

    items = [instance_module(INSTANCES[3]), (Broken(), torch.randn(1, 4, 4, 4))]
    results = ArtifactCache(tmp_path).get_many(items, "litert")
    assert not isinstance(results[0], ConversionError) and results[0].path.exists()
    assert isinstance(results[1], ConversionError) and "cannot export this" in str(results[1])
