"""The runtime registry: one entry per runtime, and nothing else branching on their names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from devices.artifacts import ArtifactCache
from devices.runtimes import NAMES, REGISTRY, runtime
from devices.spec import load_device
from hurricane.tomlcheck import ConfigError
from profilers.agent import agent

ROOT = Path(__file__).resolve().parents[1]
# Where a runtime's name may be compared: the registry itself, spec validation (its
# messages and the device kinds' rules) and the on-device agent (its loaders).
ALLOWED = {"devices/runtimes.py", "devices/spec.py", "profilers/agent/agent.py"}


def test_no_code_outside_the_registry_branches_on_a_runtime_name() -> None:
    names = "|".join(NAMES)
    pattern = re.compile(rf"""(==|!=)\s*["']({names})["']|["']({names})["']\s*(==|!=)""")
    found = []
    for folder in ("hurricane", "devices", "profilers", "pipelines", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            if rel in ALLOWED:
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


def test_every_runtime_has_an_agent_loader_and_its_options() -> None:
    assert set(agent.LOADERS) == set(NAMES) == set(agent.RUNTIMES)
    for name, entry in REGISTRY.items():
        spec_fields = set(agent.RUNTIME_OPTIONS[name]) | set(agent.COMMON_OPTIONS)
        assert entry.suffix.startswith(".") and entry.handoff_files
        assert set(entry.tolerance) == set(entry.precisions)
        # What the host sends, the agent accepts.
        spec = load_device(f"local-{name}")
        assert set(spec.runtime.agent_options()) <= spec_fields


@pytest.mark.parametrize("name", NAMES)
def test_each_entry_converts_through_the_cache(tmp_path: Path, name: str, single_thread) -> None:
    entry = runtime(name)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()
    art = ArtifactCache(tmp_path).get(net, torch.randn(1, 3, 8, 8), name, "fp32")
    assert art.path.suffix == entry.suffix
    assert [f.suffix for f in art.files] == [entry.suffix, *entry.companions]
    assert all(f.stat().st_size > 0 for f in art.files)


def test_spec_fields_and_precisions_come_from_the_registry(tmp_path: Path) -> None:
    head = 'name = "d"\nkind = "cpu"\n[runtime]\n'
    cases = {
        'name = "onnxruntime"\nxnnpack = false\n': r"runtime.xnnpack: only LiteRT takes this",
        'name = "litert"\ndevice = "GPU"\n': r"runtime.device: only OpenVINO takes this",
        'name = "litert"\nprecision = "fp16"\n': r"precision: fp16 is produced for OpenVINO",
        'name = "onnxruntime"\nprecision = "int8"\n': r"use fp32 with ONNX Runtime",
        'name = "tvm"\n': r"runtime.name",
    }
    for body, message in cases.items():
        (tmp_path / "d.toml").write_text(head + body)
        with pytest.raises(ConfigError, match=message):
            load_device(tmp_path / "d.toml")
    (tmp_path / "ok.toml").write_text(head + 'name = "openvino"\n')
    assert load_device(tmp_path / "ok.toml").measure.pairs is REGISTRY["openvino"].pairs is True
