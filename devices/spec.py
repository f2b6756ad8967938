"""Device specs: one TOML file per device — how to reach it, which runtime times the models.

See ``devices/examples/`` for one file per kind. A spec is read once, validated field by field,
and stops at the first problem with one line naming the file and the field.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from devices.runtimes import NAMES, REGISTRY, Runtime
from hurricane.names import check_name
from hurricane.tomlcheck import ConfigError, Fields, read_toml

KINDS = ("cpu", "mobile-cpu", "dsp", "vpu")
RUNTIMES = NAMES
PRECISIONS = ("fp32", "fp16", "int8")
OPENVINO_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")


@dataclass(frozen=True)
class TransportSpec:
    type: str = "local"  # local | ssh
    host: str | None = None
    port: int | None = None
    user: str | None = None
    key_file: str | None = None
    known_hosts: str | None = None
    ssh_config: str | None = None
    trust_on_first_use: bool = False
    connect_timeout_s: float = 10.0
    command_timeout_s: float = 600.0


@dataclass(frozen=True)
class DelegateSpec:
    library: str
    options: dict[str, str] = field(default_factory=dict)
    allow_cpu_fallback: bool = False


@dataclass(frozen=True)
class RuntimeSpec:
    name: str
    threads: int = 1
    precision: str = "fp32"
    xnnpack: bool = True  # LiteRT: the default XNNPACK delegate on the CPU
    delegate: DelegateSpec | None = None  # LiteRT: an external delegate (a DSP)
    device: str = "CPU"  # OpenVINO device name: CPU, GPU, NPU, MYRIAD
    hint: str = "LATENCY"  # OpenVINO performance hint
    streams: int | None = None  # OpenVINO streams (None: the hint decides)

    @property
    def entry(self) -> Runtime:
        """This runtime's registry entry (devices/runtimes.py)."""
        return REGISTRY[self.name]

    def agent_options(self) -> dict[str, Any]:
        """The options the on-device agent takes for this runtime."""
        return {"threads": self.threads, **self.entry.options(self)}


@dataclass(frozen=True)
class MeasureSpec:
    warmup: int = 5
    rounds: int = 5
    runs: int = 10
    min_round_ms: int = 50  # more runs per round for short ops, up to this much timed time
    cv_threshold: float = 0.05
    max_remeasure: int = 2
    # Which round median stands for the item: "median" (of the round medians) or "min". On a
    # shared machine, where other work only ever adds time, the least disturbed of many short
    # rounds is reproducible where the median is not (see profilers/campaign.latency_of).
    statistic: str = "median"
    batch: int = 16
    # A fixed reference model rides in every batch; a batch whose reference ran this much
    # slower than its best is measured again, up to drift_retries times (0 turns it off; see
    # profilers/drift.py).
    drift_threshold: float = 0.05
    drift_retries: int = 3
    # Each item is timed this many times, each pass in a fresh agent process, and the median
    # of the passes is stored: a compiled model's speed can differ by a few percent between
    # processes while its rounds agree within one (see profilers/passes.py).
    passes: int = 1
    # Time each layer followed by a strided skip as one unit too (hurricane/lutkeys.PairInstance):
    # OpenVINO optimises across that boundary. Default: on for OpenVINO, off otherwise.
    pairs: bool = False


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    kind: str
    transport: TransportSpec
    runtime: RuntimeSpec
    measure: MeasureSpec = MeasureSpec()
    python: str | None = None  # None: this interpreter when local, "python3" over SSH
    workdir: str = "/tmp"
    affinity: tuple[int, ...] = ()
    description: str = ""
    source: str = "<memory>"
    # Operators this device should never be offered (fnmatch patterns, e.g. "*_se" for a VPU
    # whose runtime does not fuse squeeze-excite); stage one drops them before ranking.
    exclude_ops: tuple[str, ...] = ()

    @property
    def is_local(self) -> bool:
        return self.transport.type == "local"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def python_command(self) -> str:
        if self.python:
            return self.python
        return sys.executable if self.is_local else "python3"


def builtin_devices() -> list[str]:
    folder = resources.files("devices") / "examples"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_device(name_or_path: str | Path) -> DeviceSpec:
    """Load a spec file, or a shipped example by name (``local-litert``)."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if not path.exists() and path.suffix != ".toml":
        if text not in builtin_devices():
            raise ConfigError(
                f"{text}: no such device spec file and no example of that name "
                f"(examples: {', '.join(builtin_devices())})"
            )
        resource = resources.files("devices") / "examples" / f"{text}.toml"
        with resources.as_file(resource) as real:
            return parse_device(read_toml(real, "device spec"), source=f"{text}.toml")
    return parse_device(read_toml(path, "device spec"), source=str(path))


def parse_device(data: dict[str, Any], source: str = "<string>") -> DeviceSpec:
    top = Fields(data, source)
    top.only(
        {
            "name",
            "kind",
            "description",
            "python",
            "workdir",
            "affinity",
            "transport",
            "runtime",
            "measure",
            "search",
        }
    )
    name = check_name("device", top.str("name", Path(source).stem), source, ConfigError)
    kind = top.str("kind", choices=KINDS)

    tf = top.sub("transport")
    tf.only(
        {
            "type",
            "host",
            "port",
            "user",
            "key_file",
            "known_hosts",
            "ssh_config",
            "trust_on_first_use",
            "connect_timeout_s",
            "command_timeout_s",
        }
    )
    ttype = tf.str("type", "local", choices=("local", "ssh"))
    if ttype == "local":
        extra = sorted(set(tf.table) - {"type", "command_timeout_s"})
        if extra:
            raise tf.error(extra[0], 'only an ssh transport takes this; set type = "ssh"')
    elif not tf.has("host"):
        raise tf.error("host", "missing; an ssh transport needs a host name, address or Host alias")
    transport = TransportSpec(
        type=ttype,
        host=tf.str("host", None),
        port=tf.int("port", None, lo=1),
        user=tf.str("user", None),
        key_file=tf.str("key_file", None),
        known_hosts=tf.str("known_hosts", None),
        ssh_config=tf.str("ssh_config", None),
        trust_on_first_use=tf.bool("trust_on_first_use", False),
        connect_timeout_s=tf.float("connect_timeout_s", 10.0, lo=0.1),
        command_timeout_s=tf.float("command_timeout_s", 600.0, lo=1.0),
    )
    if transport.port is not None and transport.port > 65535:
        raise tf.error("port", f"must be a TCP port (1..65535), got {transport.port}")

    rf = top.sub("runtime", required=True)
    rf.only({"name", "threads", "precision", "xnnpack", "delegate", "device", "hint", "streams"})
    rname = rf.str("name", choices=RUNTIMES)
    entry = REGISTRY[rname]
    for key in ("delegate", "device", "xnnpack", "hint", "streams"):
        if rf.has(key) and key not in entry.fields:
            takes = [r.label for r in REGISTRY.values() if key in r.fields]
            raise rf.error(key, f"only {' and '.join(takes)} takes this; runtime is {rname!r}")
    delegate = None
    if rf.has("delegate"):
        df = rf.sub("delegate")
        df.only({"library", "options", "allow_cpu_fallback"})
        opts = df.table.get("options", {})
        if not isinstance(opts, dict):
            raise df.error("options", f"expected a table of delegate options, got {opts!r}")
        delegate = DelegateSpec(
            library=df.str("library"),
            options={str(k): str(v) for k, v in opts.items()},
            allow_cpu_fallback=df.bool("allow_cpu_fallback", False),
        )
    runtime = RuntimeSpec(
        name=rname,
        threads=rf.int("threads", 1, lo=1),
        precision=rf.str("precision", "fp32", choices=PRECISIONS),
        xnnpack=rf.bool("xnnpack", True),
        delegate=delegate,
        device=rf.str("device", "CPU"),
        hint=rf.str("hint", "LATENCY", choices=OPENVINO_HINTS),
        streams=rf.int("streams", None, lo=1),
    )
    _check_kind(kind, runtime, rf)

    mf = top.sub("measure")
    mf.only(
        {
            "warmup",
            "rounds",
            "runs",
            "min_round_ms",
            "cv_threshold",
            "max_remeasure",
            "batch",
            "statistic",
            "drift_threshold",
            "drift_retries",
            "passes",
            "pairs",
        }
    )
    d = MeasureSpec()
    measure = MeasureSpec(
        warmup=mf.int("warmup", d.warmup, lo=0),
        rounds=mf.int("rounds", d.rounds, lo=1),
        runs=mf.int("runs", d.runs, lo=1),
        min_round_ms=mf.int("min_round_ms", d.min_round_ms, lo=0),
        cv_threshold=mf.float("cv_threshold", d.cv_threshold, lo=0.0),
        max_remeasure=mf.int("max_remeasure", d.max_remeasure, lo=0),
        batch=mf.int("batch", d.batch, lo=1),
        statistic=mf.str("statistic", d.statistic, choices=("median", "min")),
        drift_threshold=mf.float("drift_threshold", d.drift_threshold, lo=0.0),
        drift_retries=mf.int("drift_retries", d.drift_retries, lo=0),
        passes=mf.int("passes", d.passes, lo=1),
        pairs=mf.bool("pairs", runtime.entry.pairs),
    )
    return DeviceSpec(
        name=name,
        kind=kind,
        transport=transport,
        runtime=runtime,
        measure=measure,
        python=top.str("python", None),
        workdir=top.str("workdir", "/tmp"),
        affinity=tuple(top.int_list("affinity", [])),
        description=top.str("description", ""),
        source=source,
        exclude_ops=tuple(_search_fields(top)),
    )


def _search_fields(top: Fields) -> list[str]:
    sf = top.sub("search")
    sf.only({"exclude_ops"})
    return sf.str_list("exclude_ops", [])


def _check_kind(kind: str, rt: RuntimeSpec, rf: Fields) -> None:
    """Each device kind fixes what its runtime must produce (DESIGN.md, runtimes table)."""
    if kind == "dsp":
        if rt.name != "litert" or rt.precision != "int8":
            raise rf.error(
                "name",
                'a dsp runs LiteRT full-int8 models: set name = "litert" and precision = "int8"',
            )
        if rt.delegate is None:
            raise rf.error(
                "delegate",
                "a dsp needs [runtime.delegate] library = the path of "
                "libQnnTFLiteDelegate.so (QNN HTP) or libhexagon_interface.so on the "
                "device",
            )
    if kind == "vpu" and rt.name != "openvino":
        raise rf.error("name", f"a vpu runs OpenVINO (device MYRIAD or NPU), not {rt.name!r}")
    if rt.precision not in rt.entry.precisions:
        makes = [r.label for r in REGISTRY.values() if rt.precision in r.precisions]
        raise rf.error(
            "precision",
            f"{rt.precision} is produced for {' and '.join(makes)}; use "
            f"{' or '.join(rt.entry.precisions)} with {rt.entry.label}",
        )
