"""Pipeline files: one TOML file declares a whole run — devices, space, data, budgets and
training lengths — for ``hurricane run``. Checked at load; a bad field stops with one line
naming the file, the field and what was expected. Examples in ``pipelines/examples/``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from devices.spec import builtin_devices, load_device
from hurricane.adaptive import AdaptiveSettings
from hurricane.budgets import Budget, BudgetError
from hurricane.compute import PRECISIONS, ComputeError, TrainOn, resolve_torch_device
from hurricane.names import check_name
from hurricane.reduce import RULES, SKIP_RULES
from hurricane.search import SearchConfig
from hurricane.space import SearchSpace
from hurricane.space_file import builtin_spaces, load_space
from hurricane.supernet import SHARING
from hurricane.tomlcheck import ConfigError, Fields, read_toml
from hurricane.train import TrainConfig

# The one LUT database every command reads and writes unless told otherwise.
DEFAULT_DB = "runs/hurricane.sqlite"
# The source of a pipeline that ``hurricane generate`` builds from its flags.
COMMAND_LINE = "command line"
# How the chosen architecture's final training starts: from its supernet weights or anew.
FINAL_FROM = ("inherited", "scratch")


def parse_budget(value: Any, f: Fields, key: str) -> Budget:
    """``Budget.parse`` with the file and field named in its error."""
    try:
        return Budget.parse(value)
    except BudgetError:
        raise f.error(
            key,
            f"each budget is milliseconds (a positive number) or a percentile "
            f'of the space\'s latencies on the device ("40%"), got {value!r}',
        ) from None


@dataclass(frozen=True)
class GenerateSettings:
    """How ``hurricane run``/``generate`` search, and the defaults every search command and
    the search benchmark take: training and search fields default to ``TrainConfig``'s and
    ``SearchConfig``'s own, so each default is written once."""

    k: int = 4  # stage one: ops kept per layer (0: no reduction)
    rule: str = "pareto"  # one of hurricane.reduce.RULES
    exclude_ops: tuple[str, ...] = ()
    skip: str = "identity"  # stage one keeps skip only where it is an identity, or "all"
    two_stage: bool = True
    split: int | None = None  # first layer of stage A (default: half the layers)
    steps: int = 400  # supernet steps (stage A with two_stage)
    steps_b: int | None = None  # stage B steps (default: steps)
    batch_size: int = TrainConfig.batch_size
    lr: float = TrainConfig.lr
    # The supernet training that ranked architectures best on the ranking benchmark
    # (benchmarks/supernet_ranking.py): in-place distillation with a family's kernels and
    # expansions sharing one block. `hurricane train` keeps plain SPOS (TrainConfig's).
    distill: bool = True
    sandwich: bool = TrainConfig.sandwich
    fair: bool = TrainConfig.fair
    share: str = "family"  # which candidates share one block (supernet.SHARING)
    kd_weight: float = TrainConfig.kd_weight
    kd_temperature: float = TrainConfig.kd_temperature
    bn_batches: int = TrainConfig.bn_batches  # batch-norm recalibration per fitness
    train_limit: int | None = TrainConfig.train_limit
    eval_limit: int | None = TrainConfig.eval_limit  # validation images per fitness
    population: int = SearchConfig.population
    generations: int = SearchConfig.generations
    parents: int = SearchConfig.parents
    mutations: int = SearchConfig.mutations
    crossovers: int = SearchConfig.crossovers
    # Candidates predicted under this x budget are not made.
    min_budget_fraction: float = SearchConfig.min_fraction
    verify_top: int = 5
    final_steps: int = 400
    final_from: str = FINAL_FROM[0]  # or "scratch": retrain the chosen architecture
    measure_candidates: bool = True

    def train_config(
        self,
        space: str,
        data: str,
        out: str | Path,
        seed: int,
        progress: bool,
        train_on: TrainOn | None = None,
    ) -> TrainConfig:
        """The supernet training these settings ask for (stage A's, with two_stage), on
        ``train_on``'s torch device."""
        return TrainConfig(
            space=space,
            data=data,
            out=str(out),
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=seed,
            distill=self.distill,
            sandwich=self.sandwich,
            fair=self.fair,
            share=self.share,
            kd_weight=self.kd_weight,
            kd_temperature=self.kd_temperature,
            bn_batches=self.bn_batches,
            train_limit=self.train_limit,
            eval_limit=self.eval_limit,
            progress=progress,
            **(train_on or TrainOn()).fields(),
        )

    def search_config(self, budget_ms: float, seed: int) -> SearchConfig:
        """The constrained evolution these settings ask for, under ``budget_ms``."""
        return SearchConfig(
            budget_ms=budget_ms,
            population=self.population,
            generations=self.generations,
            parents=self.parents,
            mutations=self.mutations,
            crossovers=self.crossovers,
            min_fraction=self.min_budget_fraction,
            seed=seed,
        )


@dataclass(frozen=True)
class CoexploreSettings:
    """``[coexplore]``: deployment spaces whose devices' searches pick the configuration
    with the architecture (``hurricane.coexplore``), how the slow exploration runs, and
    which configuration among those that fit a pair takes."""

    hardware: tuple[str, ...] = ()  # resolved paths of deployment spaces
    strategy: str = "evolution"
    tune: str = "fastest"
    a: float = 0.8  # the controller's reward weight of accuracy

    def spaces(self) -> dict[str, Any]:
        """Device name -> its deployment space."""
        from devices.deployment import load_deployment_space

        loaded = [load_deployment_space(h) for h in self.hardware]
        return {d.device.name: d for d in loaded}


@dataclass(frozen=True)
class Pipeline:
    name: str
    space: str  # built-in name or resolved path
    devices: tuple[str, ...]  # built-in names or resolved paths
    budgets: tuple[Budget, ...]
    data: str = TrainConfig.data
    db: str = DEFAULT_DB
    out: str = ""
    seed: int = TrainConfig.seed
    description: str = ""
    profile_remeasure_noisy: bool = False
    generate: GenerateSettings = field(default_factory=GenerateSettings)
    train: TrainOn = field(default_factory=TrainOn)  # the torch device, not the targets
    coexplore: CoexploreSettings = field(default_factory=CoexploreSettings)
    adaptive: AdaptiveSettings | None = None  # ``[adaptive]``: the final model a GoldenNet
    validate_models: int = 0  # whole models measured to calibrate and check the LUT
    calibration_models: int = 10
    handoff_samples: int = 32
    handoff: bool = True
    report: bool = True
    source: str = "<memory>"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def budgets_field(self) -> str:
        """Where the budgets were written, for an error to name: ``hurricane generate``'s
        ``--budget`` flag, or the pipeline file's ``budgets`` field."""
        return "--budget" if self.source == COMMAND_LINE else f"{self.source}: budgets:"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pipeline:
        """The pipeline ``to_json`` wrote (``RUN/pipeline.json``)."""
        g = dict(data.get("generate") or {})
        g["exclude_ops"] = tuple(g.get("exclude_ops") or ())
        return cls(
            **{
                **data,
                "devices": tuple(data["devices"]),
                "budgets": tuple(Budget(**b) for b in data["budgets"]),
                "generate": GenerateSettings(**g),
                "train": TrainOn(**(data.get("train") or {})),
                "coexplore": _coexplore_json(data.get("coexplore") or {}),
                "adaptive": AdaptiveSettings(**data["adaptive"]) if data.get("adaptive") else None,
            }
        )


def _coexplore_json(data: dict[str, Any]) -> CoexploreSettings:
    return CoexploreSettings(**{**data, "hardware": tuple(data.get("hardware") or ())})


def builtin_pipelines() -> list[str]:
    folder = resources.files("pipelines") / "examples"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def _ref(value: str, base: Path, known: list[str], f: Fields, key: str, check) -> str:
    """A built-in name stays a name; a file path is taken relative to the pipeline file."""
    if value in known and not (base / value).exists():
        return value
    path = (base / Path(value).expanduser()).resolve()
    if not path.exists():
        raise f.error(
            key,
            f"{value!r} is neither a file (looked at {path}) nor a built-in ({', '.join(known)})",
        )
    check(path)
    return str(path)


def load_pipeline(name_or_path: str | Path) -> Pipeline:
    text = str(name_or_path)
    path = Path(text).expanduser()
    if not path.exists() and path.suffix != ".toml" and text in builtin_pipelines():
        resource = resources.files("pipelines") / "examples" / f"{text}.toml"
        with resources.as_file(resource) as real:
            return parse_pipeline(read_toml(real, "pipeline file"), str(real))
    if not path.exists() and path.suffix != ".toml":
        raise ConfigError(
            f"{text}: no such pipeline file and no example of that name "
            f"(examples: {', '.join(builtin_pipelines())})"
        )
    return parse_pipeline(read_toml(path, "pipeline file"), str(path))


def parse_pipeline(data: dict[str, Any], source: str = "<string>") -> Pipeline:
    top = Fields(data, source)
    top.only(
        {
            "name",
            "description",
            "space",
            "data",
            "devices",
            "budgets",
            "db",
            "out",
            "seed",
            "profile",
            "latency",
            "generate",
            "train",
            "coexplore",
            "adaptive",
            "handoff",
            "report",
        }
    )
    base = Path(source).parent if source != "<string>" else Path.cwd()
    name = check_name("pipeline", top.str("name", Path(source).stem), source, ConfigError)
    space = _ref(top.str("space"), base, builtin_spaces(), top, "space", load_space)
    devices = top.str_list("devices")
    if not devices:
        raise top.error("devices", 'list at least one device spec (e.g. ["local-litert"])')
    devs = tuple(_ref(d, base, builtin_devices(), top, "devices", load_device) for d in devices)
    names = [load_device(d).name for d in devs]
    if len(set(names)) != len(names):
        raise top.error("devices", f"two specs share a device name ({names}); names key the LUT")
    raw_budgets = top._get("budgets", None)
    if not isinstance(raw_budgets, list) or not raw_budgets:
        raise top.error(
            "budgets",
            'expected a list of latency budgets: milliseconds (0.08) or percentiles ("40%")',
        )
    budgets = tuple(parse_budget(b, top, "budgets") for b in raw_budgets)
    if len({b.label for b in budgets}) != len(budgets):
        raise top.error("budgets", "a budget is listed twice")

    pf = top.sub("profile")
    pf.only({"remeasure_noisy"})
    lf = top.sub("latency")
    lf.only({"validate", "calibration"})
    gf = top.sub("generate")
    d = GenerateSettings()
    gf.only(set(asdict(d)))
    gen = GenerateSettings(
        k=gf.int("k", d.k, lo=0),
        rule=gf.str("rule", d.rule, choices=tuple(RULES)),
        exclude_ops=tuple(gf.str_list("exclude_ops", [])),
        skip=gf.str("skip", d.skip, choices=SKIP_RULES),
        two_stage=gf.bool("two_stage", d.two_stage),
        split=gf.int("split", None, lo=1),
        steps=gf.int("steps", d.steps, lo=1),
        steps_b=gf.int("steps_b", None, lo=1),
        batch_size=gf.int("batch_size", d.batch_size, lo=1),
        lr=gf.float("lr", d.lr, lo=0.0),
        distill=gf.bool("distill", d.distill),
        sandwich=gf.bool("sandwich", d.sandwich),
        fair=gf.bool("fair", d.fair),
        share=gf.str("share", d.share, choices=tuple(SHARING)),
        kd_weight=_kd_weight(gf, d.kd_weight),
        kd_temperature=gf.float("kd_temperature", d.kd_temperature, lo=0.01),
        bn_batches=gf.int("bn_batches", d.bn_batches, lo=1),
        train_limit=gf.int("train_limit", None, lo=1),
        eval_limit=gf.int("eval_limit", d.eval_limit, lo=1),
        population=gf.int("population", d.population, lo=2),
        generations=gf.int("generations", d.generations, lo=1),
        parents=gf.int("parents", d.parents, lo=1),
        mutations=gf.int("mutations", d.mutations, lo=0),
        crossovers=gf.int("crossovers", d.crossovers, lo=0),
        min_budget_fraction=gf.float("min_budget_fraction", d.min_budget_fraction, lo=0.0),
        verify_top=gf.int("verify_top", d.verify_top, lo=1),
        final_steps=gf.int("final_steps", d.final_steps, lo=0),
        final_from=gf.str("final_from", d.final_from, choices=FINAL_FROM),
        measure_candidates=gf.bool("measure_candidates", d.measure_candidates),
    )
    if gen.min_budget_fraction >= 1:
        raise gf.error(
            "min_budget_fraction",
            "must be below 1 (0.9: search between 90% and "
            f"100% of each budget), got {gen.min_budget_fraction}",
        )
    n_layers = len(load_space(space).layers)
    if gen.split is not None and not gen.split < n_layers:
        raise gf.error(
            "split",
            f"must be between 1 and {n_layers - 1} for this {n_layers}-layer "
            f"space, got {gen.split}",
        )
    tf = top.sub("train")
    tf.only(set(TrainOn().fields()))
    train_on = TrainOn(
        torch_device=tf.str("torch_device", TrainOn.torch_device),
        precision=tf.str("precision", TrainOn.precision, choices=PRECISIONS),
        channels_last=tf.bool("channels_last", TrainOn.channels_last),
        workers=tf.int("workers", None, lo=0),
    )
    try:
        resolve_torch_device(train_on.torch_device)
    except ComputeError as exc:
        raise tf.error("torch_device", str(exc)) from None
    coexplore = _parse_coexplore(top, base, names, gen)
    adaptive = _parse_adaptive(top, load_space(space), gen)
    hf = top.sub("handoff")
    hf.only({"enabled", "samples"})
    rf = top.sub("report")
    rf.only({"enabled"})
    return Pipeline(
        name=name,
        space=space,
        devices=devs,
        budgets=budgets,
        data=top.str("data", Pipeline.data),
        db=top.str("db", Pipeline.db),
        out=top.str("out", f"runs/{name}"),
        seed=top.int("seed", Pipeline.seed, lo=0),
        description=top.str("description", Pipeline.description),
        profile_remeasure_noisy=pf.bool("remeasure_noisy", Pipeline.profile_remeasure_noisy),
        generate=gen,
        train=train_on,
        coexplore=coexplore,
        adaptive=adaptive,
        validate_models=lf.int("validate", Pipeline.validate_models, lo=0),
        calibration_models=lf.int("calibration", Pipeline.calibration_models, lo=2),
        handoff=hf.bool("enabled", Pipeline.handoff),
        handoff_samples=hf.int("samples", Pipeline.handoff_samples, lo=1),
        report=rf.bool("enabled", Pipeline.report),
        source=source,
    )


def _parse_coexplore(
    top: Fields, base: Path, devices: list[str], gen: GenerateSettings
) -> CoexploreSettings:
    """``[coexplore]``: each ``hardware`` file a deployment space of one of the pipeline's
    devices (an accelerator design space has no device to verify a bundle on: it is
    co-explored with ``hurricane coexplore``)."""
    from devices.deployment import load_deployment_space
    from hurricane.coexplore import STRATEGIES, TUNE_RULES

    cf = top.sub("coexplore")
    cf.only({"hardware", "strategy", "tune", "a"})
    d = CoexploreSettings()
    hardware = []
    seen: dict[str, str] = {}
    for ref in cf.str_list("hardware", []):
        path = (base / Path(ref).expanduser()).resolve()
        if not path.is_file():
            raise cf.error("hardware", f"{ref!r}: no such file (looked at {path})")
        if read_toml(path, "hardware space").get("kind") == "accelerator":
            raise cf.error(
                "hardware",
                f"{ref!r} is an accelerator design space: a pipeline co-explores a device's "
                "deployment configurations; co-explore a design space with 'hurricane "
                "coexplore --hw-space'",
            )
        dep = load_deployment_space(path)
        name = dep.device.name
        if name not in devices:
            raise cf.error(
                "hardware",
                f"{ref!r} configures device {name!r}, which is not among the pipeline's "
                f"devices ({', '.join(devices)}); add its spec to devices",
            )
        if name in seen:
            raise cf.error("hardware", f"{seen[name]!r} and {ref!r} both configure {name!r}")
        seen[name] = ref
        hardware.append(str(path))
    if hardware and gen.two_stage:
        raise cf.error(
            "hardware",
            "co-exploration searches one supernet over the whole space: set "
            "[generate] two_stage = false",
        )
    a = cf.float("a", d.a, lo=0.0)
    if a > 1:
        raise cf.error("a", f"the reward weight of accuracy is between 0 and 1, got {a}")
    return CoexploreSettings(
        hardware=tuple(hardware),
        strategy=cf.str("strategy", d.strategy, choices=tuple(STRATEGIES)),
        tune=cf.str("tune", d.tune, choices=tuple(TUNE_RULES)),
        a=a,
    )


def _kd_weight(section: Fields, default: float) -> float:
    """A distillation's share of a student's loss: a number within 0..1."""
    w = section.float("kd_weight", default, lo=0.0)
    if w > 1:
        raise section.error(
            "kd_weight", f"the distillation's share of the loss is within 0..1, got {w}"
        )
    return float(w)


def _parse_adaptive(
    top: Fields, space: SearchSpace, gen: GenerateSettings
) -> AdaptiveSettings | None:
    """``[adaptive]``: the final model made a GoldenNet (``hurricane.adaptive``); its depth
    names are checked against the space's stages here, and against the chosen architecture
    when the final step runs."""
    from hurricane.adaptive import DepthError, check_depths

    if not top.has("adaptive"):
        return None
    af = top.sub("adaptive")
    d = AdaptiveSettings()
    af.only(set(asdict(d)) | {"enabled"})
    if not af.bool("enabled", True):
        return None
    raw = af._get("depths", d.depths)
    if isinstance(raw, bool) or not isinstance(raw, (int, str, list)):
        raise af.error(
            "depths", 'expected a number of blocks per stage, "default" or a list of variant names'
        )
    if isinstance(raw, list):
        if not all(isinstance(x, str) for x in raw):
            raise af.error("depths", 'variant names are strings, like "s2-1"')
        depths = ",".join(raw)
    else:
        depths = str(raw)
    try:
        check_depths(space, depths)
    except DepthError as exc:
        raise af.error("depths", str(exc).removeprefix("depths: ")) from None
    if gen.final_steps == 0:
        raise af.error(
            "", "a GoldenNet is made by the final training: set [generate] final_steps > 0"
        )
    kd_weight = _kd_weight(af, d.kd_weight)
    return AdaptiveSettings(
        depths=depths,
        adaptive_bn=af.bool("adaptive_bn", d.adaptive_bn),
        per_depth_affine=af.bool("per_depth_affine", d.per_depth_affine),
        distill=af.bool("distill", d.distill),
        kd_weight=kd_weight,
        kd_temperature=af.float("kd_temperature", d.kd_temperature, lo=0.01),
    )
