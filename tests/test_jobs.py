"""Pipelines end to end: a tiny pipeline through a real sshd device (ONNX Runtime over SSH),
real training on Fashion-MNIST, a real SQLite LUT, real bundles; re-runs, changed inputs and
a killed run resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hurricane.tomlcheck import ConfigError
from pipelines.config import builtin_pipelines, load_pipeline, parse_pipeline
from pipelines.handoff import MANIFEST, check_files, manifest_digest, verify_bundle
from pipelines.jobs import PipelineRun
from pipelines.steps import Steps
from tests.sshd import SSHServer

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "spaces" / "tiny.toml"

PIPELINE = """
name = "tiny"
space = "{space}"
devices = ["board.toml"]
budgets = [{budget}]
db = "{db}"
out = "{out}"
[latency]
validate = 4
calibration = 2
[generate]
k = 2
split = 2
steps = {steps}
batch_size = 32
train_limit = 1024
eval_limit = 200
population = 4
generations = 2
parents = 2
mutations = 2
crossovers = 2
verify_top = 2
final_steps = {final_steps}
[handoff]
samples = 8
"""


def board_spec(folder: Path, server: SSHServer) -> Path:
    path = folder / "board.toml"
    path.write_text(
        f'name = "board"\nkind = "mobile-cpu"\npython = "{sys.executable}"\n'
        f'[transport]\ntype = "ssh"\nhost = "{server.host}"\nport = {server.port}\n'
        f'user = "{server.user}"\nkey_file = "{server.client_key}"\n'
        f'known_hosts = "{server.known_hosts}"\n'
        '[runtime]\nname = "onnxruntime"\n'
        "[measure]\nwarmup = 1\nrounds = 3\nruns = 3\nmin_round_ms = 0\ncv_threshold = 10.0\n"
    )
    return path


# Milliseconds far above what the tiny space takes, so acceptance does not hang on how busy
# the machine is; a budget a model misses is tested with make_bundle below.
def write_pipeline(
    folder: Path, budget: str = "5.0", steps: int = 20, final_steps: int = 10
) -> Path:
    path = folder / "tiny.toml"
    path.write_text(
        PIPELINE.format(
            space=TINY,
            db=folder / "lut.sqlite",
            out=folder / "run",
            budget=budget,
            steps=steps,
            final_steps=final_steps,
        )
    )
    return path


@pytest.fixture(scope="module")
def sshd():
    with SSHServer() as server:
        yield server


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HURRICANE_CACHE", str(tmp_path / "cache"))


def test_tiny_pipeline_over_ssh_bundles_and_reruns_nothing(tmp_path, sshd, single_thread) -> None:
    board_spec(tmp_path, sshd)
    p = load_pipeline(write_pipeline(tmp_path))
    first = PipelineRun(p, progress=False)
    results = first.run()
    dev = "board"
    assert set(first.steps.log.ran) == {
        "profile-board",
        "validate-board",
        "shrink-board",
        "supernet-board",
        "search-board-5ms",
        "final-board-5ms",
        "handoff-board-5ms",
        "report",
    }
    bundle = Path(results[dev]["budgets"]["5ms"]["handoff"]["bundle"])
    manifest = json.loads((bundle / MANIFEST).read_text())
    # What a deployer needs is there, and every file is what the manifest says it is.
    assert {"model.onnx", "model.pt", "arch.txt", "space.toml"} <= set(manifest["files"])
    assert check_files(bundle) == []
    assert manifest["device"]["name"] == dev and manifest["device"]["fingerprint"]["cores"] >= 1
    assert manifest["runtime"]["name"] == "onnxruntime" and manifest["runtime"]["version"]
    assert manifest["converters"]["torch"]
    lat = manifest["latency"]
    budget_ms = results[dev]["budgets"]["5ms"]["budget_ms"]
    assert lat["budget_ms"] == budget_ms and lat["measured_ms"] > 0
    assert lat["protocol"]["rounds"] == 3 and lat["protocol"]["statistic"].startswith("median")
    assert manifest["accepted"] == (lat["measured_ms"] <= budget_ms) and manifest["accepted"]
    assert manifest["verification"]["device"]["passed"]
    assert manifest["verification"]["device"]["max_abs_error"] < 1e-3
    assert 0 < manifest["accuracy"]["test_acc"] <= 1 and manifest["accuracy"]["data"]["test"]
    assert manifest["architecture"] == (bundle / "arch.txt").read_text().strip()
    report = Path(first.report_path)
    assert report.is_file() and manifest["architecture"] in report.read_text()
    shown = json.loads((report.parent / "report.json").read_text())["devices"][0]
    assert len(shown["scatter"]) >= 4  # validation models and the checked candidates
    verified = verify_bundle(bundle, str(tmp_path / "board.toml"))
    assert verified["problems"] == [] and verified["outputs"]["passed"]

    # Same inputs: nothing runs, nothing is rewritten.
    mtimes = {f.name: f.stat().st_mtime_ns for f in bundle.iterdir()}
    again = PipelineRun(load_pipeline(tmp_path / "tiny.toml"), progress=False)
    again.run()
    assert again.steps.log.ran == [] and len(again.steps.log.skipped) == 8
    assert {f.name: f.stat().st_mtime_ns for f in bundle.iterdir()} == mtimes

    # A changed input re-runs only what depends on it.
    p3 = load_pipeline(write_pipeline(tmp_path, final_steps=12))
    third = PipelineRun(p3, progress=False)
    third.run()
    assert set(third.steps.log.ran) == {"final-board-5ms", "handoff-board-5ms", "report"}

    # A tampered bundle fails its check, and the next run makes it again (and nothing else).
    (bundle / "arch.txt").write_text("skip-skip-skip\n")
    assert check_files(bundle) == [
        "arch.txt: sha256 differs from the manifest (changed or corrupt)"
    ]
    fourth = PipelineRun(p3, progress=False)
    fourth.run()
    assert "handoff-board-5ms" in fourth.steps.log.ran
    assert set(fourth.steps.log.ran) <= {"handoff-board-5ms", "report"}
    assert check_files(bundle) == []


def test_killed_run_resumes_and_finishes(tmp_path, sshd) -> None:
    board_spec(tmp_path, sshd)
    path = write_pipeline(tmp_path, steps=300)
    cmd = [sys.executable, "-m", "pipelines.cli", "run", str(path), "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "[supernet-board] running" in line:
            break
    # Kill it while it trains: no clean-up of any kind runs.
    ckpt = tmp_path / "run" / "board" / "supernet" / "checkpoint.pt"
    for line in proc.stdout:
        seen.append(line)
        if ckpt.exists():
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    steps = tmp_path / "run" / "steps"
    assert (steps / "profile-board.json").exists() and not (steps / "supernet-board.json").exists()
    assert (steps / "supernet-board.started").exists(), "".join(seen)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "[profile-board] done earlier, skipped" in done.stdout
    assert "[supernet-board] running (resuming)" in done.stdout
    assert "resuming" in done.stdout and "bundle:" in done.stdout and "report:" in done.stdout
    summary = json.loads((tmp_path / "run" / "board" / "supernet" / "summary.json").read_text())
    assert summary["resumed_from"] and summary["steps"] == 300


def test_steps_skip_rerun_and_clear_stale_work(tmp_path) -> None:
    calls = []

    def make(tag):
        def fn():
            calls.append(tag)
            return {"digest": tag}

        return fn

    s = Steps(tmp_path, echo=lambda _: None)
    work = tmp_path / "w"
    work.mkdir()
    (work / "partial").write_text("x")
    assert s.run("a", {"x": 1}, make("a1"), workdir=work) == {"digest": "a1"}
    assert (work / "partial").exists()  # a first run keeps what it may resume from
    assert s.run("a", {"x": 1}, make("a2"), workdir=work) == {"digest": "a1"}
    assert calls == ["a1"]
    s.run("a", {"x": 2}, make("a3"), workdir=work)
    assert calls == ["a1", "a3"] and not work.exists()  # changed inputs: stale work cleared
    # An interrupted step (marker, no record) resumes with its work kept...
    (tmp_path / "steps" / "b.started").write_text(
        __import__("pipelines.steps").steps.digest({"y": 1}) + "\n"
    )
    work.mkdir()
    s.run("b", {"y": 1}, make("b1"), workdir=work)
    assert work.exists()
    # ...unless its inputs changed meanwhile.
    (tmp_path / "steps" / "c.started").write_text("something-else\n")
    s.run("c", {"z": 1}, make("c1"), workdir=work)
    assert not work.exists() and not (tmp_path / "steps" / "c.started").exists()


def test_example_pipelines_load() -> None:
    names = builtin_pipelines()
    assert {"demo", "mobile-cpu", "dsp", "vpu", "coexplore", "goldennet"} <= set(names)
    for name in names:
        p = load_pipeline(name)
        assert p.devices and p.budgets
    assert load_pipeline("demo").devices == ("local-litert",)
    co = load_pipeline("coexplore").coexplore
    assert list(co.spaces()) == ["local-litert"]
    assert len(co.spaces()["local-litert"].configurations()) == 4
    golden = load_pipeline("goldennet")
    assert golden.adaptive is not None and golden.adaptive.depths == "2"
    assert golden.generate == load_pipeline("demo").generate


def test_supernet_training_options_in_a_pipeline_reach_the_training() -> None:
    import tomllib

    from hurricane.train import TrainConfig

    body = (
        'space = "demo"\ndevices = ["local-litert"]\nbudgets = [1.0]\n[generate]\n'
        "fair = true\nsandwich = true\ndistill = true\nkd_weight = 0.25\n"
        "kd_temperature = 2.0\nbn_batches = 40\n"
    )
    gen = parse_pipeline(tomllib.loads(body), "p.toml").generate
    cfg = gen.train_config("demo", "fashion", "o", 7, False)
    assert (cfg.fair, cfg.sandwich, cfg.distill) == (True, True, True)
    assert (cfg.kd_weight, cfg.kd_temperature, cfg.bn_batches) == (0.25, 2.0, 40)
    plain = parse_pipeline(tomllib.loads(body.split("[generate]")[0]), "p.toml")
    d = plain.generate.train_config("demo", "fashion", "o", 7, False)
    # hurricane run trains what ranked best on benchmarks/supernet_ranking.py.
    assert (d.fair, d.sandwich, d.distill, d.share, d.bn_batches) == (
        False,
        False,
        True,
        "family",
        TrainConfig.bn_batches,
    )
    assert (TrainConfig.distill, TrainConfig.share) == (False, "none")  # hurricane train


@pytest.mark.parametrize(
    "body, words",
    [
        ('space = "demo"\ndevices = ["local-litert"]\nbudgets = [-1]', "budgets"),
        ('space = "demo"\ndevices = ["local-litert"]\nbudgets = ["fast"]', "percentile"),
        ('space = "demo"\ndevices = []\nbudgets = [1.0]', "devices"),
        ('space = "demo"\ndevices = ["nowhere.toml"]\nbudgets = [1.0]', "nowhere.toml"),
        ('space = "nospace"\ndevices = ["local-litert"]\nbudgets = [1.0]', "space"),
        (
            'space = "demo"\ndevices = ["local-litert"]\nbudgets = [1.0]\nbudget = 2',
            "unknown field",
        ),
        (
            'space = "demo"\ndevices = ["local-litert"]\nbudgets = [1.0]\n[generate]\nsplit = 9',
            "generate.split",
        ),
        (
            'space = "demo"\ndevices = ["local-litert"]\nbudgets = [1.0]\n[generate]\nsteps = "x"',
            "generate.steps",
        ),
        ('space = "demo"\ndevices = ["local-litert"]\nbudgets = [1.0, 1]', "twice"),
        (
            'space = "demo"\ndevices = ["local-litert"]\nbudgets = [1.0]\n[generate]\n'
            "min_budget_fraction = 1.2",
            "generate.min_budget_fraction",
        ),
        (
            'space = "demo"\ndevices = ["local-litert"]\nbudgets = [1.0]\n'
            '[generate]\nskip = "some"',
            "generate.skip",
        ),
        (
            'space = "demo"\ndevices = ["local-litert"]\nbudgets = [1.0]\n'
            "[generate]\nkd_weight = 1.5",
            "generate.kd_weight",
        ),
        (
            'space = "demo"\ndevices = ["local-litert"]\nbudgets = [1.0]\n[generate]\nfair = "yes"',
            "generate.fair",
        ),
    ],
)
def test_bad_pipeline_files_say_what_and_where(tmp_path, body, words) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(body + "\n")
    with pytest.raises(ConfigError) as err:
        parse_pipeline(__import__("tomllib").loads(body), str(path))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and words in msg


def _trained_final(tmp_path: Path) -> Path:
    from hurricane.final import train_final

    res = train_final(
        str(TINY),
        "mb_k3_e3-ds_k3@0.5-shuffle_k3",
        tmp_path / "final",
        30,
        seed=0,
        batch_size=64,
        progress=False,
    )
    return Path(res["model"])


@pytest.mark.parametrize(
    "runtime, precision, files",
    [
        ("litert", "fp32", {"model.tflite"}),
        ("litert", "int8", {"model.tflite"}),
        ("openvino", "fp16", {"model.xml", "model.bin"}),
    ],
)
def test_bundle_in_each_device_format(tmp_path, runtime, precision, files, single_thread) -> None:
    """Mobile CPU (LiteRT fp32), DSP (full int8; here on the CPU, the delegate being absent
    and fallback allowed) and VPU (OpenVINO FP16 on device CPU) through the same handoff."""
    from devices.spec import parse_device
    from pipelines.handoff import make_bundle

    body = {
        "name": f"{runtime}-{precision}",
        "kind": "cpu",
        "runtime": {"name": runtime, "precision": precision},
        "measure": {"warmup": 1, "rounds": 3, "runs": 3, "min_round_ms": 0},
    }
    if precision == "int8":
        body["kind"] = "dsp"
        body["runtime"]["delegate"] = {
            "library": "/nonexistent/libQnnTFLiteDelegate.so",
            "allow_cpu_fallback": True,
        }
    spec = parse_device(body, f"{runtime}.toml")
    model = _trained_final(tmp_path)
    m = make_bundle(
        str(TINY), model, spec, tmp_path / "bundle", 1000.0, 0.05, {"test_acc": 0.5}, samples=16
    )
    assert files | {"model.onnx", "model.pt", "arch.txt", "space.toml"} == set(m["files"])
    assert check_files(tmp_path / "bundle") == []
    check = m["verification"]["device"]
    assert check["passed"] and m["accepted"], check
    assert check["tolerance_relative"] == {"fp32": 1e-3, "fp16": 2e-2, "int8": 0.1}[precision]
    if precision == "fp32":
        assert check["relative_error"] < 1e-4
    if precision == "int8":  # really quantized: far from fp32 exactness, still the same classes
        assert check["relative_error"] > 1e-4 and check["top1_agreement"] >= 0.9
    assert m["verification"]["onnx"]["relative_error"] < 1e-4
    # Over budget on the device: kept, but loudly not accepted.
    tight = make_bundle(str(TINY), model, spec, tmp_path / "tight", 1e-6, 0.05, samples=4)
    assert not tight["accepted"] and "over the 1e-06 ms budget" in tight["reasons"][0]
    manifest = json.loads((tmp_path / "tight" / MANIFEST).read_text())
    assert manifest["accepted"] is False


@pytest.fixture(scope="module")
def generated(tmp_path_factory, single_thread):
    """``hurricane generate`` for two devices and two percentile budgets, run once:
    (folder, run folder, what it printed)."""
    import contextlib
    import io

    from pipelines.cli import main

    tmp = tmp_path_factory.mktemp("generate")
    specs = []
    for name in ("ort", "ort2"):  # two devices, two budgets: one stage A per device
        spec = tmp / f"{name}.toml"
        spec.write_text(
            f'name = "{name}"\nkind = "cpu"\n[runtime]\nname = "onnxruntime"\n'
            "[measure]\nwarmup = 1\nrounds = 3\nruns = 3\nmin_round_ms = 0\n"
        )
        specs += ["--device", str(spec)]
    out = tmp / "gen"
    args = [
        "generate",
        "--space",
        str(TINY),
        *specs,
        "--budget",
        "95%",
        "--budget",
        "99%",
        "--db",
        str(tmp / "lut.sqlite"),
        "--out",
        str(out),
        "--k",
        "2",
        "--steps",
        "10",
        "--population",
        "4",
        "--generations",
        "1",
        "--verify-top",
        "1",
        "--final-steps",
        "5",
        "--train-limit",
        "512",
        "--no-progress",
    ]
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setenv("HURRICANE_CACHE", str(tmp / "cache"))
        assert main(args) == 0
    return tmp, out, printed.getvalue()


def test_generate_handoff_and_verify_commands(generated, tmp_path, capsys) -> None:
    from pipelines.cli import main

    folder, out, printed = generated
    assert "pipeline gen: 15 steps run, 0 skipped" in printed  # 2 x (3 + 2 x 2) + report
    for dev in ("ort", "ort2"):
        for b in ("p95", "p99"):
            final = json.loads((out / dev / b / "final.json").read_text())
            assert final["device"] == dev and final["measured_ms"] > 0
            assert f"{dev} @ {final['budget_ms']:g} ms ({b})" in printed
    assert "report:" in printed and "bundle:" not in printed
    spec = folder / "ort.toml"
    assert (
        main(
            [
                "handoff",
                str(out / "ort" / "p95"),
                "--device",
                str(spec),
                "--samples",
                "4",
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 0
    )
    made = capsys.readouterr().out
    digest = manifest_digest(tmp_path / "b")  # printed to pin: handoff verify --digest
    assert "accepted" in made and f"manifest sha256 {digest}" in made
    args = ["handoff", "verify", str(tmp_path / "b"), "--device", str(spec), "--digest", digest]
    assert main(args) == 0
    assert "checksums match" in capsys.readouterr().out
    (tmp_path / "b" / "model.onnx").write_bytes(b"broken")
    assert main(["handoff", "verify", str(tmp_path / "b")]) == 1
    assert "model.onnx: sha256 differs" in capsys.readouterr().out
    assert main(["handoff", "verify", str(tmp_path / "nowhere")]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_report_command_redraws_a_runs_report(generated, capsys) -> None:
    """run_cli's docstring promised ``hurricane report``; it is the report the run made."""
    from pipelines.cli import main

    _, out, _ = generated
    index = out / "report" / "index.html"
    first = index.read_text()
    index.unlink()
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {index}"
    again = index.read_text()
    for dev in ("ort", "ort2"):
        for b in ("p95", "p99"):
            arch = json.loads((out / dev / b / "final.json").read_text())["arch"]
            assert arch in first and arch in again
    assert main(["report", str(out.parent / "nowhere")]) == 2
    assert "no pipeline.json" in capsys.readouterr().err


def test_a_percentile_budget_is_one_budget_in_the_pipeline_and_the_benchmark(
    generated, capsys
) -> None:
    """A "95%" budget once meant 1000 architectures of the reduced space in the pipeline
    and 2000 of the full space in the search benchmark: two budgets under one name."""
    from benchmarks.search_comparison import main as benchmark

    folder, out, _ = generated
    pipeline_ms = json.loads((out / "ort" / "p95" / "final.json").read_text())["budget_ms"]
    db, spec = str(folder / "lut.sqlite"), str(folder / "ort.toml")
    benchmark(
        ["--space", str(TINY), "--device", spec, "--db", db, "--budget", "95%", "--budget-only"]
    )
    printed = capsys.readouterr().out
    assert f"budget {pipeline_ms} ms on ort" in printed


def test_search_budgets_keeps_the_budgets_an_earlier_run_finished_with_the_same_settings(
    tmp_path,
) -> None:
    from benchmarks.search_comparison import build_parser, stored_budgets

    args = build_parser().parse_args(["--budgets", "20%", "40%", "--out", "a"])
    same = vars(build_parser().parse_args(["--budgets", "20%", "--out", "elsewhere"]))
    other = vars(build_parser().parse_args(["--budgets", "40%", "--final-seeds", "2"]))
    path = tmp_path / "search_budgets.json"
    path.write_text(
        json.dumps(
            [
                {"budget": "20%", "budget_ms": 0.05, "settings": same},
                {"budget": "40%", "budget_ms": 0.06, "settings": other},
            ]
        )
    )
    kept = stored_budgets(path, args)
    assert list(kept) == ["20%"] and kept["20%"]["budget_ms"] == 0.05
    assert stored_budgets(tmp_path / "none.json", args) == {}
