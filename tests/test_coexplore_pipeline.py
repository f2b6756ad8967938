"""A pipeline that co-explores a device's deployment configurations ([coexplore]): each
configuration profiled into its own table, pairs searched, the chosen pair measured on its
configuration, and a bundle that carries it (manifest and a ready device spec). Real
ONNX Runtime on this machine, real training, a real SQLite LUT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devices.spec import load_device
from hurricane.tomlcheck import ConfigError
from pipelines.config import load_pipeline, parse_pipeline
from pipelines.handoff import check_files, read_manifest, verify_bundle
from pipelines.jobs import PipelineRun

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "spaces" / "tiny.toml"
SPEC = (
    'name = "ort"\nkind = "cpu"\n[runtime]\nname = "onnxruntime"\n'
    "[measure]\nwarmup = 1\nrounds = 3\nruns = 3\nmin_round_ms = 0\ncv_threshold = 10.0\n"
)
PIPELINE = f"""
name = "co"
space = "{TINY}"
devices = ["ort.toml"]
budgets = [5.0]
db = "lut.sqlite"
out = "run"
[generate]
two_stage = false
k = 0
steps = 20
batch_size = 32
train_limit = 1024
eval_limit = 200
population = 4
generations = 2
parents = 2
mutations = 2
crossovers = 2
verify_top = 2
final_steps = 10
[coexplore]
hardware = ["ort-configs.toml"]
[handoff]
samples = 8
"""


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HURRICANE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # the pipeline's db and out are relative


def write(tmp_path: Path, pipeline: str = PIPELINE, configs: str | None = None) -> Path:
    (tmp_path / "ort.toml").write_text(SPEC)
    (tmp_path / "ort-configs.toml").write_text(
        configs or 'kind = "deployment"\ndevice = "ort.toml"\nthreads = [1, 2]\n'
    )
    (tmp_path / "p.toml").write_text(pipeline)
    return tmp_path / "p.toml"


def test_pipeline_coexplores_and_bundles_the_chosen_configuration(tmp_path, single_thread):
    p = load_pipeline(write(tmp_path))
    assert p.coexplore.strategy == "evolution" and len(p.coexplore.hardware) == 1
    run = PipelineRun(p, echo=lambda _: None, progress=False)
    run.run()
    assert {"profile-ort", "configurations-ort", "search-ort-5ms", "final-ort-5ms"} <= set(
        run.steps.log.ran
    )
    names = {"ort.t1-fp32", "ort.t2-fp32"}
    res = run.results["ort"]["budgets"]["5ms"]
    assert res["search"]["coexplore"]["configurations"] == 2
    assert all(t["config"] in names for t in res["search"]["top"])
    fin = json.loads((tmp_path / "run" / "ort" / "5ms" / "final.json").read_text())
    chosen = fin["hardware"]["config"]
    assert chosen in names and fin["device"] == chosen
    # Every candidate was timed under its own configuration.
    top = {t["arch"]: t["config"] for t in res["search"]["top"]}
    assert all(c["measured_on"] == top[c["arch"]] for c in fin["candidates"])
    threads = fin["hardware"]["knobs"]["threads"]
    ready = load_device(fin["hardware"]["file"])
    assert ready.name == chosen and ready.runtime.threads == threads

    bundle = Path(res["handoff"]["bundle"])
    m = read_manifest(bundle)
    assert check_files(bundle) == [] and (bundle / "hardware.toml").is_file()
    assert m["hardware"]["config"] == chosen and m["hardware"]["spec"] == "hardware.toml"
    assert m["device"]["name"] == chosen
    assert m["runtime"]["settings"]["threads"] == threads == m["runtime"]["threads"]
    # The bundle's own spec runs it again as it was timed.
    again = verify_bundle(bundle, str(bundle / "hardware.toml"))
    assert again["device"] == chosen and again["problems"] == []

    # The report draws both fronts from the evaluated pairs.
    fronts = res["search"]["coexplore"]["pairs"]
    assert fronts and all(f["own_ms"] > 0 and f["config"] in names for f in fronts)
    assert res["search"]["coexplore"]["default"] == "ort.t1-fp32"
    page = (tmp_path / "run" / "report" / "index.html").read_text()
    assert 'src="coexplore_0_0_ort.png"' in page
    assert (tmp_path / "run" / "report" / "coexplore_0_0_ort.png").stat().st_size > 1000

    rerun = PipelineRun(load_pipeline(tmp_path / "p.toml"), echo=lambda _: None, progress=False)
    rerun.run()
    assert rerun.steps.log.ran == []


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (("two_stage = false\n", ""), "set [generate] two_stage = false"),
        (('devices = ["ort.toml"]', 'devices = ["local-onnxruntime"]'), "not among the pipeline"),
        (('hardware = ["ort-configs.toml"]', 'hardware = ["accel.toml"]'), "accelerator design"),
        (('hardware = ["ort-configs.toml"]', 'hardware = ["none.toml"]'), "no such file"),
        (("[coexplore]\n", '[coexplore]\nstrategy = "annealing"\n'), "strategy"),
        (("[coexplore]\n", "[coexplore]\na = 2.0\n"), "between 0 and 1"),
    ],
)
def test_bad_coexplore_section_is_one_line(tmp_path, edit, says) -> None:
    (tmp_path / "accel.toml").write_text((ROOT / "tests/spaces/accel-two.toml").read_text())
    path = write(tmp_path, PIPELINE.replace(*edit))
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and "coexplore" in msg and says in msg, msg


def test_pipeline_json_round_trips_the_coexplore_section(tmp_path) -> None:
    from pipelines.config import Pipeline

    p = load_pipeline(write(tmp_path))
    back = Pipeline.from_json(json.loads(json.dumps(p.to_json())))
    assert back.coexplore == p.coexplore
    assert parse_pipeline({**_plain(), "coexplore": {}}, str(tmp_path / "x.toml")).coexplore == (
        type(p.coexplore)()
    )


def _plain() -> dict:
    return {"space": "demo", "devices": ["local-litert"], "budgets": [1.0]}
