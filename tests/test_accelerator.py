"""The analytical accelerator: real zigzag-dse runs on tiny layers, checked against a hand
count; the LUT cache; the accelerator space file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import devices.accelerator as accel
from devices.accelerator import (
    AcceleratorDesign,
    AcceleratorError,
    AcceleratorSpaceError,
    evaluate_layer,
    load_accelerator_space,
)
from devices.convert import to_onnx
from hurricane.lut import LutDB

EXAMPLE = Path(__file__).resolve().parents[1] / "devices/examples/accelerators/accel-small.toml"


@pytest.fixture(scope="module")
def conv1x1(tmp_path_factory, single_thread) -> tuple[Path, int]:
    """A 64->64 1x1 convolution on an 8x8 input, as ONNX, and its MAC count by hand."""
    path = tmp_path_factory.mktemp("accel") / "conv1x1.onnx"
    torch.manual_seed(0)
    to_onnx(nn.Conv2d(64, 64, 1, bias=False).eval(), torch.randn(1, 64, 8, 8), path)
    return path, 64 * 64 * 8 * 8  # cin * cout * output pixels


def test_hand_counted_conv(conv1x1, capfd) -> None:
    path, macs = conv1x1
    small = AcceleratorDesign(pe_rows=8, pe_cols=8)
    r = evaluate_layer(path, small)
    # 64 output by 64 input channels fill an 8x8 array completely: the compute alone takes
    # MACs / PEs cycles, and zigzag agrees exactly.
    ideal = macs // small.pes
    assert r["ideal_cycles"] == ideal == 4096
    # What it adds is loading the first operands and draining the last outputs through a
    # 32 B/cycle DRAM port (64 KiB in, 4 KiB weights, 4 KiB out for a 4096-cycle layer):
    # 1.16x here; half as much again would mean a stall the model should not have.
    assert ideal <= r["cycles"] <= 1.5 * ideal
    assert r["latency_ms"] == pytest.approx(r["cycles"] / (small.clock_mhz * 1e3))
    assert r["energy_mj"] > 0 and r["mac_layers"] == 1 and r["ignored_ops"] == []
    # Twice the rows: the 64 output channels still fill them, so fewer cycles.
    bigger = evaluate_layer(path, AcceleratorDesign(pe_rows=16, pe_cols=8))
    assert bigger["ideal_cycles"] == ideal // 2
    assert bigger["cycles"] < r["cycles"]
    out = capfd.readouterr()
    assert out.out == "" and out.err == ""  # zigzag's logging kept off the terminal


@pytest.fixture(scope="module")
def depthwise(tmp_path_factory, single_thread) -> tuple[Path, int]:
    """A 16-channel 3x3 depthwise convolution on an 8x8 input (padded), as ONNX, and its
    MAC count by hand."""
    path = tmp_path_factory.mktemp("accel") / "dw.onnx"
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False).eval()
    to_onnx(conv, torch.randn(1, 16, 8, 8), path)
    return path, 16 * 9 * 8 * 8  # channels * taps * output pixels


def test_a_fixed_dataflow_costs_what_its_array_can_unroll(depthwise, conv1x1) -> None:
    """On an output-by-input-channel array (KC) a depthwise layer has one input channel per
    group: only the 8 rows work, so it takes at least MACs / 8 cycles; an array that unrolls
    output columns (KOX) fills all 64 PEs. A dense 1x1 layer fills KC as it is."""
    path, macs = depthwise
    kc = evaluate_layer(path, AcceleratorDesign(pe_rows=8, pe_cols=8, dataflow="KC"))
    kox = evaluate_layer(path, AcceleratorDesign(pe_rows=8, pe_cols=8, dataflow="KOX"))
    rows_only = macs // 8
    assert kc["ideal_cycles"] == kox["ideal_cycles"] == macs // 64
    assert rows_only <= kc["cycles"] <= 1.5 * rows_only
    assert kox["cycles"] < rows_only / 2 and kox["cycles"] >= macs // 64
    dense, _ = conv1x1
    flexible = evaluate_layer(dense, AcceleratorDesign(pe_rows=8, pe_cols=8))
    assert evaluate_layer(dense, AcceleratorDesign(pe_rows=8, pe_cols=8, dataflow="KC")) == (
        flexible
    )


def test_dataflow_names_and_refusals() -> None:
    flexible, kc = AcceleratorDesign(), AcceleratorDesign(dataflow="KC")
    # A flexible design keeps the name (the cache key) it had before dataflows existed.
    assert flexible.name == "pe16x16-gb256k-rf16-bw32-c500-i8"
    assert kc.name == flexible.name + "-dfKC" and kc.resources() == flexible.resources()
    with pytest.raises(AcceleratorError, match="dataflow: 'CK' is not one of flexible, KC"):
        AcceleratorDesign(dataflow="CK")
    assert accel.mapping_yaml(kc)[0]["spatial_mapping_hint"] == {"D1": ["K", "G"], "D2": ["C"]}


def test_lut_block_mac_layers() -> None:
    """An MBConv block from its LUT key: expand, depthwise and project convolutions are
    costed (each ideal = its MACs over the PEs), activations listed as not costed."""
    design = AcceleratorDesign(pe_rows=8, pe_cols=8)
    r = evaluate_layer("mb_k3_e6:16>24:8x8:s2:relu", design)
    hidden, out_px = 16 * 6, 4 * 4
    layers = [16 * hidden * 8 * 8, hidden * 9 * out_px, hidden * 24 * out_px]
    assert r["mac_layers"] == 3 and "Relu" in r["ignored_ops"]
    assert r["ideal_cycles"] == pytest.approx(sum(m / design.pes for m in layers), abs=3)
    assert r["cycles"] >= r["ideal_cycles"]


def test_cache_skips_zigzag(conv1x1, tmp_path, monkeypatch) -> None:
    path, _ = conv1x1
    calls: list[int] = []
    real = accel.run_zigzag

    def counted(*args):
        calls.append(args[-1])  # the lpf_limit
        return real(*args)

    monkeypatch.setattr(accel, "run_zigzag", counted)
    design = AcceleratorDesign(pe_rows=8, pe_cols=8)
    with LutDB(tmp_path / "lut.sqlite") as db:
        first = evaluate_layer(path, design, db=db)
        assert evaluate_layer(path, design, db=db) == first and len(calls) == 1
        other = evaluate_layer(path, AcceleratorDesign(pe_rows=8, pe_cols=16), db=db)
        assert len(calls) == 2 and other["cycles"] < first["cycles"]
    with LutDB(tmp_path / "lut.sqlite") as db:  # kept in the file
        assert evaluate_layer(path, design, db=db) == first and len(calls) == 2
        evaluate_layer(path, design, lpf_limit=3, db=db)  # another bound: another evaluation
        assert calls == [4, 4, 3]


def test_unmodellable_design() -> None:
    with pytest.raises(AcceleratorError, match="pe_rows 128 is above 64"):
        AcceleratorDesign(pe_rows=128)
    with pytest.raises(AcceleratorError, match="clock_mhz: must be > 0"):
        AcceleratorDesign(clock_mhz=0)


def test_example_space_loads() -> None:
    space = load_accelerator_space(EXAMPLE)
    assert space.name == "accel-small" and len(space.grid()) == 8
    designs = space.designs()
    assert 1 <= len(designs) <= 12 and space.default in designs
    assert space.default.name == "pe16x16-gb64k-rf16-bw32-c500-i8"
    assert all(d.pes <= 256 and d.buffer_bytes <= 266000 for d in designs)
    assert space.default.resources() == {"pes": 256, "buffer_bytes": 64 * 1024 + 256 * 20}


BASE = """
pe_rows = [8, 16]
pe_cols = [8]
global_buffer_kib = [64]
[default]
pe_rows = 8
[limits]
max_pes = 128
"""


def test_dataflow_is_a_knob(tmp_path: Path) -> None:
    path = tmp_path / "space.toml"
    path.write_text(BASE.replace("pe_cols = [8]", 'pe_cols = [8]\ndataflow = ["KC", "KOX"]'))
    space = load_accelerator_space(path)
    assert space.default.dataflow == "KC"  # the first value, as for every knob
    assert sorted({d.dataflow for d in space.designs()}) == ["KC", "KOX"]
    assert len(space.designs()) == 2 * len({(d.pe_rows, d.pe_cols) for d in space.designs()})


@pytest.mark.parametrize(
    ("edit", "field", "needle"),
    [
        (("pe_cols = [8]", "pe_cols = [8]\npe_depth = [2]"), "pe_depth", "unknown field"),
        (("pe_cols = [8]", "pe_cols = [0, 8]"), "pe_cols", "must be > 0, got 0"),
        (("global_buffer_kib = [64]", "global_buffer_kib = [-64]"), "global_buffer_kib", ""),
        (("pe_cols = [8]", "pe_cols = [128]"), "pe_cols", "above 64"),
        (
            ("pe_cols = [8]", "pe_cols = [8]\nreg_bytes = [1]\nprecision_bits = [16]"),
            "reg_bytes",
            "",
        ),
        (("max_pes = 128", "max_pes = 32"), "limits.max_pes", "the smallest uses 64"),
        (("max_pes = 128", "max_buffer_bytes = 1000"), "limits.max_buffer_bytes", "uses 66816"),
        (("max_pes = 128", "max_pes = 128\nmax_area = 3"), "limits.max_area", "unknown field"),
        (("pe_cols = [8]", 'pe_cols = [8]\ndataflow = ["KC", "XY"]'), "dataflow", "'XY' is"),
        (("pe_cols = [8]", "pe_cols = [8]\ndataflow = [1]"), "dataflow", "non-empty strings"),
        (
            ("pe_rows = 8\n[limits]", 'pe_rows = 8\ndataflow = "KOX"\n[limits]'),
            "default.dataflow",
            "not one of",
        ),
        (("pe_rows = 8\n[limits]", "pe_rows = 32\n[limits]"), "default.pe_rows", "not one of"),
        (
            ("pe_rows = 8\n[limits]\nmax_pes = 128", "pe_rows = 16\n[limits]\nmax_pes = 100"),
            "default",
            "pe16x8-gb64k-rf16-bw32-c500-i8 uses 128 PEs",
        ),
    ],
)
def test_space_errors(tmp_path: Path, edit: tuple[str, str], field: str, needle: str) -> None:
    path = tmp_path / "space.toml"
    path.write_text(BASE.replace(*edit))
    with pytest.raises(AcceleratorSpaceError) as info:
        load_accelerator_space(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: {field}: ") and needle in msg


def test_tables_from_worker_processes_match_one_process(tmp_path) -> None:
    from devices.accelerator import design_tables
    from hurricane.space_file import load_space

    space = load_space(str(Path(__file__).parent / "spaces" / "mini.toml"))
    design = AcceleratorDesign(pe_rows=8, pe_cols=8)
    with LutDB(tmp_path / "one.sqlite") as db:
        one = design_tables(space, design, db, lpf_limit=2, progress=False)
    with LutDB(tmp_path / "two.sqlite") as db:
        two = design_tables(space, design, db, lpf_limit=2, progress=False, workers=2)
    assert two == one and len(one[0]) == len(space.op_instances()) + len(space.fixed_instances())
    # Each figure the workers made is in the database: a second call evaluates nothing.
    with LutDB(tmp_path / "two.sqlite") as db:
        for key in one[0]:
            assert db.accel_get(design.name, key, 2, accel.zigzag_version(), accel.MODEL_VERSION)
