"""A pipeline whose final model is a GoldenNet ([adaptive]): every depth trained at once,
scored, exported, checked and timed on the device in one bundle with the selector beside
it. Real ONNX Runtime on this machine, real training on Fashion-MNIST, a real SQLite LUT."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from hurricane.tomlcheck import ConfigError
from pipelines.config import Pipeline, load_pipeline
from pipelines.handoff import check_files, read_manifest
from pipelines.jobs import PipelineRun

ROOT = Path(__file__).resolve().parents[1]
# The test space with one width: a stage's trailing blocks keep its shape unless a skip.
SPACE = (
    (ROOT / "tests" / "spaces" / "deep.toml")
    .read_text()
    .replace("widths = [0.5, 1.0]", "widths = [1.0]")
)
SPEC = (
    'name = "ort"\nkind = "cpu"\n[runtime]\nname = "onnxruntime"\n'
    "[measure]\nwarmup = 1\nrounds = 3\nruns = 3\nmin_round_ms = 0\ncv_threshold = 10.0\n"
)
PIPELINE = """
name = "golden"
space = "deep.toml"
devices = ["ort.toml"]
budgets = [20.0]
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
verify_top = 1
final_steps = 12
[adaptive]
depths = 1
[handoff]
samples = 8
"""


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HURRICANE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, pipeline: str = PIPELINE) -> Path:
    (tmp_path / "deep.toml").write_text(SPACE)
    (tmp_path / "ort.toml").write_text(SPEC)
    (tmp_path / "p.toml").write_text(pipeline)
    return tmp_path / "p.toml"


def test_pipeline_hands_off_every_depth(tmp_path, single_thread) -> None:
    p = load_pipeline(write(tmp_path))
    assert p.adaptive is not None and p.adaptive.depths == "1" and p.adaptive.distill
    assert Pipeline.from_json(json.loads(json.dumps(p.to_json()))).adaptive == p.adaptive
    run = PipelineRun(p, echo=lambda _: None, progress=False)
    run.run()
    res = run.results["ort"]["budgets"]["20ms"]
    depths = res["final"]["depths"]
    assert depths[0]["name"] == "full" and len(depths) >= 2
    assert all(0.0 < d["test_acc"] <= 1.0 for d in depths)

    bundle = Path(res["handoff"]["bundle"])
    m = read_manifest(bundle)
    assert check_files(bundle) == [] and m["accepted"], m["reasons"]
    listed = m["adaptive"]["depths"]
    assert [d["name"] for d in listed] == [d["name"] for d in depths]
    assert [d["test_acc"] for d in listed] == [d["test_acc"] for d in depths]
    assert (bundle / "selector.py").is_file() and (bundle / "adaptive.pt").is_file()
    for d in listed:
        assert d["file"] in m["files"] and d["measured_ms"] > 0
    for d in listed[1:]:
        assert d["verification"]["device"]["passed"] and d["verification"]["onnx"]["passed"]
        assert d["blocks"] < 7 and d["dropped"]
    # Each depth's file is the network with fewer blocks: fewer convolutions in its graph.
    convs = []
    for d in listed:
        sess = ort.InferenceSession(str(bundle / d["file"]), providers=["CPUExecutionProvider"])
        x = np.zeros(m["format"]["input_shape"], dtype=np.float32)
        assert sess.run(None, {sess.get_inputs()[0].name: x})[0].shape == (1, 10)
        import onnx

        convs.append(sum(n.op_type == "Conv" for n in onnx.load(bundle / d["file"]).graph.node))
    assert convs[0] == max(convs) and convs[-1] < convs[0]

    # The bundle's own selector runs its depths; with no budget to speak of, the full one.
    ran = subprocess.run(
        [sys.executable, str(bundle / "selector.py"), str(bundle), "--budget-ms", "1000"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    summary = json.loads(ran.stdout.strip().splitlines()[-1])
    assert summary["final"] == "full" and summary["runs"] > 0 and summary["switches"] == 0
    # The report draws every depth beside the search's front, with the bundle's timings.
    page = (tmp_path / "run" / "report" / "index.html").read_text()
    assert 'id="goldennets"' in page and 'src="golden_0_0_ort.png"' in page
    assert (tmp_path / "run" / "report" / "golden_0_0_ort.png").stat().st_size > 1000
    for d in listed:
        assert f"<code>{d['name']}</code>" in page
    rerun = PipelineRun(load_pipeline(tmp_path / "p.toml"), echo=lambda _: None, progress=False)
    rerun.run()
    assert rerun.steps.log.ran == []


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (("depths = 1", 'depths = ["s1-3"]'), "stage 1 (layers 0-2) can drop at most 2"),
        (("depths = 1", 'depths = ["s4-1"]'), "has 3 stages, not 4"),
        (("depths = 1", 'depths = ["first"]'), "expected 'full' or stages"),
        (("depths = 1", "depths = true"), "expected a number of blocks"),
        (("depths = 1", "kd_weight = 1.5"), "within 0..1"),
        (("depths = 1", "depth = 1"), "unknown field"),
        (("final_steps = 12", "final_steps = 0"), "final_steps > 0"),
    ],
)
def test_bad_adaptive_section_is_one_line(tmp_path, edit, says) -> None:
    with pytest.raises(ConfigError) as err:
        load_pipeline(write(tmp_path, PIPELINE.replace(*edit)))
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and "adaptive" in msg and says in msg, msg


def test_generate_depths_flag_is_checked_against_the_space(tmp_path, capsys) -> None:
    from pipelines.cli import main

    write(tmp_path)
    args = ["generate", "--space", "deep.toml", "--device", "ort.toml", "--budget", "20"]
    assert main([*args, "--depths", "s1-1,s2-3", "--out", "g"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "adaptive.depths" in err and "stage 2 (layers 3-5) can drop at most 2" in err
    assert not (tmp_path / "g").exists()  # refused before anything ran
