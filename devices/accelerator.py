"""An analytical accelerator: a device whose LUT figures come from ``zigzag-dse``, not a timer.

A design (PE array, buffers, DRAM bandwidth, clock, precision) is written out as zigzag's
accelerator YAML, a LUT operator instance is exported to ONNX (the same module a campaign
would time), and zigzag's cost model, with a small bounded mapping search, gives cycles and
energy. The design's dataflow says which loop dimensions its array may unroll (a fixed
dataflow is what makes the hardware matter to the architecture: a depthwise convolution fills
one row of an output-by-input-channel array). Figures are cached per (key, design, lpf_limit)
in the LUT database, so the
co-exploration can ask again for free. Only MAC layers cost anything in zigzag 3.9.1: its ONNX
parser reads Conv (grouped and depthwise included), Gemm and MatMul, and turns every other node
(activations, BN that export did not fold, pooling, Add/Mul of residuals and SE) into a
zero-cost placeholder; those op types are listed in each result's ``ignored_ops``.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import tempfile
from dataclasses import asdict, dataclass, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm import tqdm

from hurricane.errors import UserError
from hurricane.lut import LutDB
from hurricane.lutkeys import OpInstance, PairInstance
from hurricane.space import SearchSpace
from hurricane.tomlcheck import ConfigError, Fields, dumps_toml, read_toml

# Bump when the YAML a design becomes, or how figures are read back, changes: cached rows of
# another version are evaluated again.
MODEL_VERSION = 1
# One LUT block in 0.25-3.5 s on this machine (a search at 6 took 4 s, at 8 minutes).
DEFAULT_LPF_LIMIT = 4
# zigzag 3.9.1 was seen to crash printing a 64x64 array's mapping with another description;
# with this one, 16, 32 and 64 per side ran on MBConv (SE too), ShuffleNet, skip and head
# blocks. Larger arrays were not tried, so they are refused.
MAX_PE_SIDE = 64
MAC_OPS = ("Conv", "QLinearConv", "Gemm", "MatMul")
NO_WORK_OPS = ("Identity", "Constant")  # exporter artefacts, not worth listing as ignored

# First-order energy per bit accessed (pJ), after zigzag's TPU-like example (a 128 B register
# file 0.095 pJ per 8-bit access, DRAM 700 pJ per 64 bits): SRAM grows with the square root of
# its size, from 0.2 pJ/bit at 256 KiB; a MAC costs 0.04 pJ at 8 bits, with the square of the
# bits.
REG_PJ_PER_BIT = 0.012
SRAM_PJ_PER_BIT_256K = 0.2
DRAM_PJ_PER_BIT = 11.0
MAC_PJ_8BIT = 0.04


# Dataflows: the loop dimensions zigzag may unroll over the array's rows (D1) and columns
# (D2); it picks the best of a few spatial mappings drawn from these. ``flexible`` lets every
# layer choose (a reconfigurable array, or an upper bound); the fixed ones are common designs.
# Measured (zigzag 3.9.1, 16x16 PEs, 64 KiB, lpf_limit 4, 14x14 input, 32 channels): an MBConv
# k3 e6 block takes 21.1k cycles on flexible, 21.4k on KOX and 38.3k on KC; a fused MBConv
# k3 e3 27.6k on flexible and KC and 35.8k on KOX.
DATAFLOWS: dict[str, dict[str, list[str]]] = {
    # output channels (depthwise: groups) by input channels or output pixels
    "flexible": {"D1": ["K", "G"], "D2": ["C", "OX", "OY"]},
    # output by input channels, weight stationary, as a TPU's systolic array
    "KC": {"D1": ["K", "G"], "D2": ["C"]},
    # output channels by output columns, as ShiDianNao and Eyeriss-like row arrays
    "KOX": {"D1": ["K", "G"], "D2": ["OX"]},
}
DEFAULT_DATAFLOW = "flexible"


class AcceleratorError(UserError):
    """A design zigzag cannot model, or a layer it cannot map onto a design."""


class AcceleratorSpaceError(ConfigError):
    """A bad accelerator space file."""


@dataclass(frozen=True)
class AcceleratorDesign:
    """One accelerator configuration: a PE array fed by per-PE weight registers and one
    global buffer, behind DRAM."""

    pe_rows: int = 16
    pe_cols: int = 16
    global_buffer_kib: int = 256
    reg_bytes: int = 16  # per PE, for weights
    dram_bw: int = 32  # bytes per cycle
    clock_mhz: int = 500
    precision_bits: int = 8
    dataflow: str = DEFAULT_DATAFLOW

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "dataflow":
                problem = knob_problem(f.name, value)
                if problem:
                    raise AcceleratorError(f"accelerator design: dataflow: {problem}")
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise AcceleratorError(f"accelerator design: {f.name}: must be > 0, got {value!r}")
        problem = design_problem(self)
        if problem:
            raise AcceleratorError(f"accelerator design {self.name}: {problem}")

    @property
    def name(self) -> str:
        """Readable and unique over every knob: the cache's key for the design (a flexible
        design keeps the name it had before dataflows were a knob, and so its cached rows)."""
        flow = "" if self.dataflow == DEFAULT_DATAFLOW else f"-df{self.dataflow}"
        return (
            f"pe{self.pe_rows}x{self.pe_cols}-gb{self.global_buffer_kib}k-rf{self.reg_bytes}"
            f"-bw{self.dram_bw}-c{self.clock_mhz}-i{self.precision_bits}{flow}"
        )

    @property
    def pes(self) -> int:
        return self.pe_rows * self.pe_cols

    @property
    def buffer_bytes(self) -> int:
        """On-chip storage: the global buffer and every PE's weight and output registers."""
        return self.global_buffer_kib * 1024 + self.pes * (self.reg_bytes + self._out_reg_bits // 8)

    @property
    def _out_reg_bits(self) -> int:
        return 2 * 2 * self.precision_bits  # two partial sums at twice the operand precision

    def resources(self) -> dict[str, int]:
        return {"pes": self.pes, "buffer_bytes": self.buffer_bytes}


def knob_problem(knob: str, value: int | str) -> str | None:
    """Why zigzag cannot model one knob's value, or None."""
    if knob == "dataflow":
        return None if value in DATAFLOWS else f"{value!r} is not one of {', '.join(DATAFLOWS)}"
    if isinstance(value, int) and knob in ("pe_rows", "pe_cols") and value > MAX_PE_SIDE:
        return (
            f"{knob} {value} is above {MAX_PE_SIDE} (larger arrays are not checked with zigzag-dse)"
        )
    return None


def design_problem(design: AcceleratorDesign) -> str | None:
    """Why zigzag cannot model this design, or None."""
    for f in fields(design):
        problem = knob_problem(f.name, getattr(design, f.name))
        if problem:
            return problem
    if design.reg_bytes * 8 < design.precision_bits:
        return f"reg_bytes {design.reg_bytes} holds no {design.precision_bits}-bit weight"
    return None


# --- the space file ----------------------------------------------------------------------
KNOBS = tuple(f.name for f in fields(AcceleratorDesign))
LIMITS = ("max_pes", "max_buffer_bytes")


@dataclass(frozen=True)
class AcceleratorSpace:
    """A grid of designs (one list of values per knob), a default design and resource limits."""

    knobs: dict[str, tuple[int | str, ...]]
    default: AcceleratorDesign
    max_pes: int | None = None
    max_buffer_bytes: int | None = None
    name: str = ""
    source: str = "<memory>"

    def meets(self, design: AcceleratorDesign) -> bool:
        return (self.max_pes is None or design.pes <= self.max_pes) and (
            self.max_buffer_bytes is None or design.buffer_bytes <= self.max_buffer_bytes
        )

    def grid(self) -> list[AcceleratorDesign]:
        """Every combination of knob values zigzag can model, limits not applied."""
        designs = []
        for combo in itertools.product(*(self.knobs[k] for k in KNOBS)):
            knobs: dict[str, Any] = dict(zip(KNOBS, combo))
            try:
                designs.append(AcceleratorDesign(**knobs))
            except AcceleratorError:
                continue  # registers narrower than a weight in this combination
        return designs

    def designs(self) -> list[AcceleratorDesign]:
        """The designs within the limits, in grid order."""
        return [d for d in self.grid() if self.meets(d)]


def load_accelerator_space(path: str | Path) -> AcceleratorSpace:
    """Read and validate an accelerator space file (see ``devices/examples/accel-small.toml``)."""
    source = str(path)
    top = Fields(
        read_toml(path, "accelerator space", AcceleratorSpaceError),
        source,
        error_type=AcceleratorSpaceError,
    )
    top.only({"name", "kind", "description", "default", "limits", *KNOBS})
    top.str("kind", "accelerator", choices=("accelerator",))
    top.str("description", "", empty=True)
    base = AcceleratorDesign()
    knobs: dict[str, tuple[int | str, ...]] = {}
    for knob in KNOBS:
        values: list[Any]
        if knob == "dataflow":
            values = top.str_list(knob, [base.dataflow])
        else:
            values = top.int_list(knob, [getattr(base, knob)])
        if not values:
            raise top.error(knob, "expected at least one value")
        if knob != "dataflow" and min(values) <= 0:
            raise top.error(knob, f"values must be > 0, got {min(values)}")
        for value in values:
            problem = knob_problem(knob, value)
            if problem:
                raise top.error(knob, problem)
        knobs[knob] = tuple(dict.fromkeys(values))
    lim = top.sub("limits")
    lim.only(set(LIMITS))
    max_pes, max_buffer = (lim.int(k, None, lo=1) for k in LIMITS)
    space = AcceleratorSpace(
        knobs, base, max_pes, max_buffer, top.str("name", Path(source).stem), source
    )
    if not space.grid():
        raise top.error("reg_bytes", "no value holds a weight of any precision_bits value")
    _check_limits(space, lim)
    default = _default(top.sub("default"), knobs)
    if not space.meets(default):
        raise top.error(
            "default",
            f"{default.name} uses {default.pes} PEs and {default.buffer_bytes} buffer bytes, "
            "over the limits",
        )
    return AcceleratorSpace(knobs, default, max_pes, max_buffer, space.name, source)


def _default(table: Fields, knobs: dict[str, tuple[int | str, ...]]) -> AcceleratorDesign:
    table.only(set(KNOBS))
    chosen: dict[str, Any] = {}
    for knob in KNOBS:
        if knob == "dataflow":
            value = table.str(knob, knobs[knob][0])
        else:
            value = table.int(knob, knobs[knob][0], lo=1)
        if value not in knobs[knob]:
            raise table.error(knob, f"{value} is not one of the knob's values {list(knobs[knob])}")
        chosen[knob] = value
    try:
        return AcceleratorDesign(**chosen)
    except AcceleratorError as exc:
        raise table.error("", str(exc)) from None


def _check_limits(space: AcceleratorSpace, lim: Fields) -> None:
    """Limits no design meets stop here, naming the smallest design's use."""
    grid = space.grid()
    if space.max_pes is not None:
        least = min(d.pes for d in grid)
        if least > space.max_pes:
            raise lim.error(
                "max_pes", f"{space.max_pes} is below every design (the smallest uses {least})"
            )
        grid = [d for d in grid if d.pes <= space.max_pes]
    if space.max_buffer_bytes is not None:
        least = min(d.buffer_bytes for d in grid)
        if least > space.max_buffer_bytes:
            raise lim.error(
                "max_buffer_bytes",
                f"{space.max_buffer_bytes} is below every design within the limits "
                f"(the smallest uses {least})",
            )


# --- zigzag inputs -----------------------------------------------------------------------
def _memory(
    size_bits: int,
    operands: list[str],
    bw_bits: int,
    served: list[str],
    pj_per_bit: float,
    shared_port: bool = False,
) -> dict[str, Any]:
    """One memory level: a read and a write port of ``bw_bits`` (one shared port: DRAM)."""

    def alloc(directions: dict[str, list[str]]) -> list[str]:
        return [f"{op}, {d}" for op in operands for d in directions["O" if op == "O" else "io"]]

    port = {"bandwidth_min": bw_bits, "bandwidth_max": bw_bits}
    reads = {"O": ["tl", "th"], "io": ["tl"]}
    writes = {"O": ["fh", "fl"], "io": ["fh"]}
    if shared_port:
        both = {k: reads[k] + writes[k] for k in reads}
        ports = [{"name": "rw_port_1", "type": "read_write", **port, "allocation": alloc(both)}]
    else:
        ports = [
            {"name": "r_port_1", "type": "read", **port, "allocation": alloc(reads)},
            {"name": "w_port_1", "type": "write", **port, "allocation": alloc(writes)},
        ]
    cost = round(pj_per_bit * bw_bits, 6)
    return {
        "size": size_bits,
        "r_cost": cost,
        "w_cost": cost,
        "area": 0.0,
        "latency": 1,
        "operands": operands,
        "ports": ports,
        "served_dimensions": served,
    }


def accelerator_yaml(design: AcceleratorDesign) -> dict[str, Any]:
    """zigzag's accelerator description of a design, memories innermost first (the order
    is the hierarchy: keep it when writing)."""
    bits = design.precision_bits
    gb_pj = SRAM_PJ_PER_BIT_256K * math.sqrt(design.global_buffer_kib / 256)
    # The global buffer's ports carry a row and a column of operands each way per cycle.
    gb_bw = 2 * bits * (design.pe_rows + design.pe_cols)
    out_bits = design._out_reg_bits
    return {
        "name": design.name,
        "memories": {
            "reg_w": _memory(design.reg_bytes * 8, ["I2"], bits, [], REG_PJ_PER_BIT),
            "reg_o": _memory(out_bits, ["O"], out_bits, [], REG_PJ_PER_BIT),
            "global_buffer": _memory(
                design.global_buffer_kib * 1024 * 8, ["I1", "I2", "O"], gb_bw, ["D1", "D2"], gb_pj
            ),
            "dram": _memory(
                10**12, ["I1", "I2", "O"], design.dram_bw * 8, ["D1", "D2"], DRAM_PJ_PER_BIT, True
            ),
        },
        "operational_array": {
            "unit_energy": MAC_PJ_8BIT * (bits / 8) ** 2,
            "unit_area": 1.0,
            "dimensions": ["D1", "D2"],
            "sizes": [design.pe_rows, design.pe_cols],
        },
    }


def mapping_yaml(design: AcceleratorDesign) -> list[dict[str, Any]]:
    """zigzag's mapping description: the design's dataflow as spatial mapping hints."""
    return [
        {
            "name": "default",
            "spatial_mapping_hint": DATAFLOWS[design.dataflow],
            "memory_operand_links": {"O": "O", "W": "I2", "I": "I1"},
        }
    ]


def _workload(onnx_bytes: bytes, bits: int) -> tuple[Any, list[str], int]:
    """The ONNX model with the design's precision on every MAC node, the op types zigzag
    will not cost, and the number of MAC nodes."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    ignored: list[str] = []
    macs = 0
    for node in model.graph.node:
        if node.op_type not in MAC_OPS:
            if node.op_type not in ignored and node.op_type not in NO_WORK_OPS:
                ignored.append(node.op_type)
            continue
        macs += 1
        for attr in ("weight_size", "act_size"):
            node.attribute.append(onnx.helper.make_attribute(attr, bits))
    # zigzag reads every tensor's shape from value_info, which only a file it loads gets.
    return onnx.shape_inference.infer_shapes(model), ignored, macs


def zigzag_version() -> str:
    return metadata.version("zigzag-dse")


def run_zigzag(
    workload: Any, accelerator: str, mapping: str, dump_folder: str, lpf_limit: int
) -> list[dict[str, float]]:
    """zigzag's per-layer figures for one workload (the one place zigzag is called)."""
    from zigzag.api import get_hardware_performance_zigzag

    # (energy, latency, cmes); cmes[0] is (the workload's sum, [(one layer's, info), ...]).
    cmes = get_hardware_performance_zigzag(
        workload,
        accelerator,
        mapping,
        opt="latency",
        dump_folder=dump_folder,
        lpf_limit=lpf_limit,
        loma_show_progress_bar=False,
    )[-1]
    return [
        {
            "cycles": float(cme.latency_total2),
            "ideal_cycles": float(cme.ideal_cycle),
            "energy_pj": float(cme.energy_total),
        }
        for cme, _ in cmes[0][1]
    ]


def _quiet_zigzag(*args: Any) -> list[dict[str, float]]:
    """``run_zigzag`` with its logging and prints kept off the terminal, and the root logger
    (zigzag calls ``logging.basicConfig``) left as it was."""
    from devices.convert import quiet

    root = logging.getLogger()
    saved = root.level, root.handlers[:]
    holder: dict[str, Any] = {}
    try:
        quiet(lambda: holder.setdefault("layers", run_zigzag(*args)))
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
    return holder["layers"]


def _onnx_for(layer: OpInstance | PairInstance | str | Path) -> tuple[str, bytes]:
    """The cache key and ONNX bytes of a layer: a LUT key or instance (exported as the
    campaign builds it), or an .onnx file (keyed by its content)."""
    if isinstance(layer, Path) or (isinstance(layer, str) and layer.endswith(".onnx")):
        data = Path(layer).read_bytes()
        return "onnx:" + hashlib.sha256(data).hexdigest()[:16], data
    if isinstance(layer, str):
        from hurricane.lutkeys import is_pair_key

        if is_pair_key(layer):
            first, second = layer.split("+")
            layer = PairInstance(OpInstance.from_key(first), OpInstance.from_key(second))
        else:
            layer = OpInstance.from_key(layer)
    from devices.convert import to_onnx
    from hurricane.subnet import instance_module

    module, example = instance_module(layer)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "layer.onnx"
        to_onnx(module, example, out)
        return layer.key, out.read_bytes()


def evaluate_layer(
    layer: OpInstance | PairInstance | str | Path,
    design: AcceleratorDesign,
    lpf_limit: int = DEFAULT_LPF_LIMIT,
    db: LutDB | None = None,
) -> dict[str, Any]:
    """Cycles, latency (ms at the design's clock) and energy (mJ) of one layer on a design,
    from ``db``'s cache when it holds them, else from zigzag (then stored there)."""
    if isinstance(layer, (OpInstance, PairInstance)):
        key = layer.key
    elif isinstance(layer, str) and not layer.endswith(".onnx"):
        key = layer
    else:
        key = None  # an ONNX file: keyed by its content, known once read
    if key is not None and db is not None:
        hit = db.accel_get(design.name, key, lpf_limit, zigzag_version(), MODEL_VERSION)
        if hit is not None:
            return hit
    key, data = _onnx_for(layer)
    if db is not None:
        hit = db.accel_get(design.name, key, lpf_limit, zigzag_version(), MODEL_VERSION)
        if hit is not None:
            return hit
    figures = _evaluate(key, data, design, lpf_limit)
    if db is not None:
        db.accel_put(design.name, key, lpf_limit, zigzag_version(), MODEL_VERSION, figures)
    return figures


def _zigzag_error(key: str, design: AcceleratorDesign, exc: Exception) -> AcceleratorError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    if type(exc).__name__ == "NoValidLoopOrderingFoundException":
        return AcceleratorError(
            f"{key} on {design.name}: zigzag found no mapping ({first}); the layer may not "
            "fit the design: try a larger global_buffer_kib or reg_bytes"
        )
    return AcceleratorError(f"{key} on {design.name}: zigzag-dse failed: {first}")


def _evaluate(key: str, data: bytes, design: AcceleratorDesign, lpf_limit: int) -> dict[str, Any]:
    import yaml

    model, ignored, macs = _workload(data, design.precision_bits)
    layers: list[dict[str, float]] = []
    if macs:
        with tempfile.TemporaryDirectory() as tmp:
            acc, mapping = Path(tmp) / "accelerator.yaml", Path(tmp) / "mapping.yaml"
            acc.write_text(yaml.safe_dump(accelerator_yaml(design), sort_keys=False))
            mapping.write_text(yaml.safe_dump(mapping_yaml(design), sort_keys=False))
            try:
                layers = _quiet_zigzag(model, str(acc), str(mapping), f"{tmp}/out", lpf_limit)
            except Exception as exc:  # zigzag raises bare exceptions for unmappable layers
                raise _zigzag_error(key, design, exc) from None
    cycles = float(sum(layer["cycles"] for layer in layers))
    return {
        "cycles": cycles,
        "ideal_cycles": sum(layer["ideal_cycles"] for layer in layers),
        "latency_ms": cycles / (design.clock_mhz * 1e3),
        "energy_mj": sum(layer["energy_pj"] for layer in layers) * 1e-9,
        "mac_layers": macs,
        "ignored_ops": ignored,
    }


def design_json(design: AcceleratorDesign) -> dict[str, Any]:
    return {"name": design.name, **asdict(design), **design.resources()}


def design_tables(
    space: SearchSpace,
    design: AcceleratorDesign,
    db: LutDB,
    lpf_limit: int = DEFAULT_LPF_LIMIT,
    progress: bool = True,
    workers: int = 1,
) -> tuple[dict[str, float], dict[str, float]]:
    """Latency (ms) and energy (mJ) of every operator instance ``space`` needs on ``design``:
    a latency table and an energy table in the LUT's own form (both add up over a network's
    layers, so ``hurricane.latency.LutPredictor`` predicts either). Each evaluation is stored
    as it is made, so an interrupted run keeps what it computed; with ``workers`` > 1 the
    ones not cached are spread over that many processes (zigzag is single-threaded)."""
    instances = list(dict.fromkeys([*space.fixed_instances(), *space.op_instances()]))
    version = (zigzag_version(), MODEL_VERSION)
    figures: dict[str, dict[str, Any]] = {}
    for inst in instances:
        hit = db.accel_get(design.name, inst.key, lpf_limit, *version)
        if hit is not None:
            figures[inst.key] = hit
    missing = [i for i in instances if i.key not in figures]
    bar = tqdm(
        total=len(instances),
        initial=len(figures),
        desc=f"zigzag {design.name}",
        unit="op",
        disable=not progress,
    )
    with bar:
        if workers > 1 and len(missing) > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            ctx = multiprocessing.get_context("spawn")  # no forked torch or zigzag state
            with ProcessPoolExecutor(min(workers, len(missing)), mp_context=ctx) as pool:
                jobs = {pool.submit(evaluate_layer, i, design, lpf_limit): i for i in missing}
                for job in as_completed(jobs):
                    key = jobs[job].key
                    figures[key] = job.result()
                    db.accel_put(design.name, key, lpf_limit, *version, figures[key])
                    bar.update()
        else:
            for inst in missing:
                figures[inst.key] = evaluate_layer(inst, design, lpf_limit, db)
                bar.update()
    latency = {k: f["latency_ms"] for k, f in figures.items()}
    energy = {k: f["energy_mj"] for k, f in figures.items()}
    return latency, energy


def write_design_files(design: AcceleratorDesign, out: Path) -> list[Path]:
    """The chosen design as a user keeps it: ``hardware.toml`` (its knobs and resources),
    and ``accelerator.yaml`` and ``mapping.yaml`` (the descriptions zigzag-dse evaluated)."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    toml_path, yaml_path = out / "hardware.toml", out / "accelerator.yaml"
    mapping_path = out / "mapping.yaml"
    body = {"name": design.name, "kind": "accelerator", **asdict(design)}
    body["resources"] = design.resources()
    toml_path.write_text(dumps_toml(body, f"accelerator design {design.name}"))
    yaml_path.write_text(yaml.safe_dump(accelerator_yaml(design), sort_keys=False))
    mapping_path.write_text(yaml.safe_dump(mapping_yaml(design), sort_keys=False))
    return [toml_path, yaml_path, mapping_path]
