"""The ``hurricane`` command line (pipelines.cli), mostly in-process through ``main``."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hurricane.space_file import builtin_spaces, load_space
from pipelines.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")

BUILTINS = ["default", "demo", "fbnet", "proxyless"]

TINY = """\
name = "tiny-cli"
description = "two layers for a quick CLI run"
channel_divisor = 4

[input]
resolution = 28
channels = 1
classes = 10

[stem]
cout = 8
stride = 2

[[layers]]
cout = 16
stride = 2
ops = ["mb_k3_e3", "ds_k3"]
widths = [0.5, 1.0]

[[layers]]
cout = 16
ops = ["mb_k3_e3", "ds_k3", "skip"]

[head]
channels = 32
"""


def _error_line(capsys) -> str:
    """The one line a user error prints; nothing else on stderr."""
    err = capsys.readouterr().err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    assert lines[0].startswith("hurricane: error: "), err
    assert err.endswith("\n")
    return lines[0]


# --- help and spaces ---------------------------------------------------------------------------


def test_help_in_process(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("space", "train", "demo"):
        assert command in out


def test_help_entry_point() -> None:
    """The installed console script, next to this interpreter."""
    script = Path(sys.executable).parent / "hurricane"
    proc = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: hurricane")
    commands = proc.stdout.split("{", 1)[1].split("}", 1)[0].split(",")
    assert {"space", "train", "demo", "devices", "profile", "lut"} <= set(commands)
    assert proc.stderr == ""


def test_train_help_lists_options(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--space", "--data", "--steps", "--sample-layers", "--fixed", "--fresh"):
        assert option in out


def test_space_show_json(capsys) -> None:
    assert main(["space", "show", "demo", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    space = load_space("demo")
    assert shown["name"] == "demo"
    assert shown["num_op_instances"] == len(space.op_instances())
    assert shown["log10_size"] == pytest.approx(space.log10_size())
    assert isinstance(shown["layers"], list)
    assert len(shown["layers"]) == len(space.layers) == 6
    for entry, layer in zip(shown["layers"], space.layers):
        assert isinstance(entry, dict)
        assert entry["candidates"] == list(layer.ops)
        assert len(entry["candidates"]) == 12
    assert shown == json.loads(json.dumps(space.summary()))


def test_space_show_text(capsys) -> None:
    assert main(["space", "show", "demo"]) == 0
    out = capsys.readouterr().out
    space = load_space("demo")
    assert f"log10 size: {space.log10_size():.2f}" in out
    assert f"operator instances: {len(space.op_instances())}" in out
    assert "input 1x28x28, 10 classes" in out
    assert "12: mb_k3_e3 " in out  # candidates of a layer


def test_space_show_file(tmp_path: Path, capsys) -> None:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    assert main(["space", "show", str(path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["name"] == "tiny-cli"
    assert [layer["candidates"] for layer in shown["layers"]] == [
        ["mb_k3_e3", "ds_k3"],
        ["mb_k3_e3", "ds_k3", "skip"],
    ]
    assert shown["log10_size"] == pytest.approx(float(torch.tensor(4 * 3.0).log10()))


def test_space_show_bad_file(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(TINY.replace('"mb_k3_e3", "ds_k3"]', '"mb_k3_e3", "warp_k9"]', 1))
    assert main(["space", "show", str(path)]) == 2
    line = _error_line(capsys)
    assert str(path) in line
    assert "layers[0].ops[1]" in line
    assert "warp_k9" in line


def test_space_show_not_toml(tmp_path: Path, capsys) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("name = \n[input\n")
    assert main(["space", "show", str(path)]) == 2
    line = _error_line(capsys)
    assert str(path) in line
    assert "not valid TOML" in line


def test_space_show_unknown_name(capsys) -> None:
    assert main(["space", "show", "no-such-space"]) == 2
    line = _error_line(capsys)
    assert "no-such-space" in line
    for name in BUILTINS:
        assert name in line


def test_space_list(capsys) -> None:
    assert main(["space", "list"]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    assert [line.split()[0] for line in lines] == BUILTINS == builtin_spaces()
    demo = lines[BUILTINS.index("demo")]
    assert f"{len(load_space('demo').layers)} layers" in demo
    assert f"log10 size {load_space('demo').log10_size():6.2f}" in demo


# --- train: user errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--data", "imagefolder:{tmp}/nowhere"], ["does not exist", "nowhere"]),
        (["--data", "{tmp}/nowhere"], ["unknown data set", "nowhere"]),
        (["--sample-layers", "0-99"], ["--sample-layers", "0-99", "0..5"]),
        (["--sample-layers", "two"], ["--sample-layers", "two"]),
        (["--fixed", "mb_k3_e3-nonsense_op"], ["layers", "space"]),
        (["--fixed", "mb_k3_e3-mb_k3_e3-mb_k3_e3-mb_k3_e3-mb_k3_e3-warp_k9"], ["layer 5"]),
        (["--space", "no-such-space"], ["no-such-space", "built-in"]),
    ],
)
@pytest.mark.parametrize("command", ["train"])
def test_train_user_errors(tmp_path: Path, capsys, command: str, args, words) -> None:
    args = [a.format(tmp=tmp_path) for a in args]
    out = tmp_path / "run"
    code = main([command, *args, "--out", str(out), "--no-progress", "--threads", "1"])
    line = _error_line(capsys)
    assert code == 2
    for word in words:
        assert word in line
    assert not (out / "checkpoint.pt").exists()


# --- train: a real, tiny run -------------------------------------------------------------------


def test_train_resume_and_fresh(tmp_path: Path, capsys) -> None:
    space = tmp_path / "tiny.toml"
    space.write_text(TINY)
    out = tmp_path / "run"
    args = [
        "train",
        "--space",
        str(space),
        "--steps",
        "4",
        "--batch-size",
        "16",
        "--train-limit",
        "64",
        "--eval-limit",
        "50",
        "--eval-paths",
        "1",
        "--out",
        str(out),
        "--no-progress",
        "--threads",
        "1",
    ]

    assert main(args) == 0
    captured = capsys.readouterr()
    assert "trained 4 steps" in captured.out
    for name in ("summary.json", "checkpoint.pt", "supernet.pt", "log.jsonl"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == summary["total_steps"] == 4
    assert summary["steps_per_epoch"] == 4
    assert summary["space"] == "tiny-cli"
    assert summary["data"]["train"] == 64
    assert summary["data"]["val"] == 50
    assert summary["resumed_from"] == []
    assert len(summary["history"]) == 1
    record = summary["history"][0]
    assert record["step"] == 4
    assert len(record["val_acc_paths"]) == 1
    assert 0.0 <= record["val_acc_paths"][0] <= 1.0
    assert record["train_loss"] > 0
    log = (out / "log.jsonl").read_text().strip().split("\n")
    assert [json.loads(line) for line in log] == summary["history"]
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ckpt["step"] == 4
    assert ckpt["config"]["lr"] == 0.1
    digest = summary["state_sha256"]

    # The same command again resumes at the end: nothing more is trained.
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "trained 4 steps" in captured.out
    assert "resuming" in captured.err
    assert "step 4/4" in captured.err
    again = json.loads((out / "summary.json").read_text())
    assert again["steps"] == 4
    assert again["resumed_from"] == [4]
    assert again["history"] == summary["history"]
    assert again["state_sha256"] == digest
    assert len((out / "log.jsonl").read_text().strip().split("\n")) == 1

    # A different learning rate is a different run: refused, with what to do.
    assert main([*args, "--lr", "0.05"]) == 2
    line = _error_line(capsys)
    assert "lr" in line
    assert "0.05" in line
    assert "--fresh" in line
    assert json.loads((out / "summary.json").read_text())["state_sha256"] == digest

    # --fresh starts over with the new settings.
    assert main([*args, "--lr", "0.05", "--fresh"]) == 0
    capsys.readouterr()
    fresh = json.loads((out / "summary.json").read_text())
    assert fresh["steps"] == 4
    assert fresh["resumed_from"] == []
    assert fresh["config"]["lr"] == 0.05
    assert fresh["state_sha256"] != digest
    assert len((out / "log.jsonl").read_text().strip().split("\n")) == 1


# --- one set of defaults -----------------------------------------------------------------------


def _db_defaults(parser, path=()) -> dict[str, object]:
    """Every (sub)command's --db default, by command path."""
    import argparse

    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.update(_db_defaults(sub, (*path, name)))
        elif "--db" in action.option_strings:
            out[" ".join(path)] = action.default
    return out


def test_every_command_defaults_to_one_database() -> None:
    """`hurricane shrink` then `hurricane train --two-stage` (the README's order) once read
    two databases: train defaulted to runs/latency.sqlite."""
    from benchmarks import latency_validation, search_comparison
    from pipelines.cli import build_parser
    from pipelines.config import DEFAULT_DB, Pipeline, load_pipeline

    defaults = _db_defaults(build_parser())
    assert {"train", "shrink", "search", "profile", "generate", "latency predict"} <= set(defaults)
    # run, demo and report take the database their pipeline file or run folder names.
    from_file = {"run", "demo", "report"}
    assert {c for c, d in defaults.items() if d is None} == from_file
    assert {d for c, d in defaults.items() if c not in from_file} == {DEFAULT_DB}
    assert Pipeline.db == DEFAULT_DB and load_pipeline("demo").db == DEFAULT_DB
    for bench in (search_comparison, latency_validation):
        assert bench.build_parser().get_default("db") == DEFAULT_DB


def test_search_commands_take_their_defaults_from_the_config_dataclasses() -> None:
    from hurricane.reduce import RULES, SKIP_RULES
    from hurricane.search import SearchConfig
    from pipelines.cli import build_parser
    from pipelines.config import GenerateSettings

    g, parser = GenerateSettings(), build_parser()
    assert (g.population, g.generations, g.min_budget_fraction) == (
        SearchConfig.population,
        SearchConfig.generations,
        SearchConfig.min_fraction,
    )
    given = ["--space", "demo", "--device", "x", "--budget", "1"]
    for command in (["search", "--supernet", "s"], ["generate"], ["train", "--two-stage"]):
        args = parser.parse_args([*command, *given])
        assert (args.population, args.generations, args.verify_top, args.final_steps) == (
            g.population,
            g.generations,
            g.verify_top,
            g.final_steps,
        ), command
        assert args.final_from == g.final_from
    gen = parser.parse_args(["generate", *given])
    assert (gen.fair, gen.sandwich, gen.distill, gen.bn_batches) == (
        g.fair,
        g.sandwich,
        g.distill,
        g.bn_batches,
    )
    flipped = parser.parse_args(["generate", *given, "--no-distill", "--fair", "--bn-batches", "5"])
    assert (flipped.distill, flipped.fair, flipped.bn_batches) == (False, True, 5)
    shrink = parser.parse_args(["shrink", "--space", "demo", "--device", "x"])
    assert (shrink.k, shrink.rule, shrink.skip) == (g.k, g.rule, g.skip)
    for bad in (["--rule", "nope"], ["--skip", "nope"]):  # choices are the registries'
        with pytest.raises(SystemExit):
            parser.parse_args(["shrink", "--space", "demo", "--device", "x", *bad])
    assert shrink.rule in RULES and shrink.skip in SKIP_RULES


# --- latency predict ---------------------------------------------------------------------------


def test_latency_predict_takes_a_device_spec_like_every_other_device_flag(ort_lut, capsys) -> None:
    db, spec, _ = ort_lut
    space = str(Path(__file__).parent / "spaces" / "tiny.toml")
    args = ["latency", "predict", "--space", space, "--db", str(db)]
    assert main([*args, "--device", str(spec), "mb_k3_e3-ds_k3@0.5-skip"]) == 0
    out = capsys.readouterr().out
    assert " ms  (LUT sum " in out and "mb_k3_e3-ds_k3@0.5-skip" in out
    # The device's name in the database is not a spec: refused like any other unknown device.
    assert main([*args, "--device", "ort", "mb_k3_e3-ds_k3@0.5-skip"]) == 2
    line = _error_line(capsys)
    assert "ort: no such device spec file and no example of that name" in line


def test_a_mistyped_budget_is_one_line_before_any_lut_is_read(tmp_path: Path, capsys) -> None:
    base = ["--space", "demo", "--device", "local-litert", "--db", str(tmp_path / "none.sqlite")]
    for command in (["search", "--supernet", "s"], ["train", "--two-stage"]):
        assert main([*command, *base, "--budget", "fast"]) == 2
        line = _error_line(capsys)
        assert "a budget is milliseconds" in line and "'fast'" in line


# --- bad numbers and files: one line each, before anything runs --------------------------------


def _usage_error(capsys, argv: list[str]) -> str:
    """The one line a bad flag value prints (exit status 2, no usage block)."""
    assert main(argv) == 2
    return _error_line(capsys)


@pytest.mark.parametrize("steps", ["-5", "0"])
def test_train_steps_must_be_positive(tmp_path: Path, capsys, steps: str) -> None:
    """-5 trained nothing and wrote an untrained supernet.pt (exit 0); 0 fell back to
    --epochs without a word."""
    out = tmp_path / "run"
    line = _usage_error(capsys, ["train", "--space", "demo", f"--steps={steps}", "--out", str(out)])
    assert f"argument --steps: expected an integer >= 1, got '{steps}'" in line
    assert not out.exists()


def test_profile_limit_must_be_positive(tmp_path: Path, capsys) -> None:
    """--limit -5 measured all but the last five entries."""
    db = tmp_path / "lut.sqlite"
    argv = ["profile", "--space", "demo", "--device", "local-onnxruntime", "--db", str(db)]
    line = _usage_error(capsys, [*argv, "--limit=-5"])
    assert "argument --limit: expected an integer >= 1, got '-5'" in line
    assert not db.exists()


@pytest.mark.parametrize("value", ["nan", "inf", "1e400", "-1"])
def test_search_budget_must_be_finite_and_positive(tmp_path: Path, capsys, value: str) -> None:
    """nan made an AssertionError deep in the search; inf searched with no limit."""
    argv = ["search", "--space", "demo", "--device", "local-litert", "--supernet", "s"]
    line = _usage_error(capsys, [*argv, "--db", str(tmp_path / "x.sqlite"), f"--budget={value}"])
    assert "argument --budget: a budget is milliseconds" in line and f"got '{value}'" in line


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_generate_budget_names_the_flag(tmp_path: Path, capsys, value: str) -> None:
    argv = ["generate", "--space", "demo", "--device", "local-litert", "--out", str(tmp_path)]
    line = _usage_error(capsys, [*argv, "--budget", value])
    assert "argument --budget: a budget is milliseconds" in line and f"got '{value}'" in line


@pytest.mark.parametrize(
    ("flag", "value", "want"),
    [
        ("--lr", "nan", "a finite number > 0"),
        ("--epochs", "inf", "a finite number > 0"),
        ("--val-fraction", "1.5", "a finite number in (0, 1)"),
        ("--min-budget-fraction", "nan", "a finite number in [0, 1)"),
        ("--ckpt-every", "0", "an integer >= 1"),
        ("--population", "1", "an integer >= 2"),
    ],
)
def test_every_number_flag_of_a_kind_is_read_one_way(capsys, flag: str, value: str, want) -> None:
    line = _usage_error(capsys, ["train", "--space", "demo", f"{flag}={value}"])
    assert f"argument {flag}: expected {want}, got '{value}'" in line


def test_a_pipeline_file_that_is_not_utf8_is_one_line(tmp_path: Path, capsys) -> None:
    f = tmp_path / "latin.toml"
    f.write_bytes('name = "p"\ndescription = "caf\xe9"\n'.encode("latin-1"))
    assert main(["run", str(f)]) == 2
    line = _error_line(capsys)
    assert f"{f}: not UTF-8 text" in line and "0xe9" in line


def _writable(folder: Path) -> bool:
    probe = folder / ".probe"
    try:
        probe.write_text("")
    except OSError:
        return False
    probe.unlink()
    return True


@contextlib.contextmanager
def _read_only(folder: Path):
    """``folder`` made read-only: chmod, and where that does not stop us (root), the
    immutable attribute."""
    folder.chmod(0o555)
    immutable = False
    try:
        if _writable(folder) and shutil.which("chattr"):
            immutable = subprocess.run(["chattr", "+i", str(folder)]).returncode == 0
        if _writable(folder):
            pytest.skip("cannot make a folder read-only on this machine")
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def _last_error_line(capsys) -> str:
    """The error line a command ends with, after its progress lines; the only one."""
    lines = capsys.readouterr().err.strip("\n").split("\n")
    assert [x for x in lines if "error" in x] == lines[-1:], lines
    return lines[-1]


def test_a_read_only_output_folder_is_one_line_and_loses_nothing(tmp_path: Path, capsys) -> None:
    space = tmp_path / "tiny.toml"
    space.write_text(TINY)
    out = tmp_path / "run"
    args = ["train", "--space", str(space), "--steps", "2", "--batch-size", "16"]
    args += ["--train-limit", "32", "--eval-limit", "16", "--eval-paths", "1"]
    args += ["--out", str(out), "--no-progress", "--threads", "1"]
    assert main(args) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with _read_only(out):
        # Resumes from the checkpoint, then cannot write the supernet.
        assert main(args) == 2
        line = _last_error_line(capsys)
        assert line.startswith(f"hurricane: error: {out}: cannot write "), line
        assert "make the folder writable" in line and "again to resume" in line
        assert main([*args, "--fresh"]) == 2  # --fresh would remove the checkpoint first
        assert _last_error_line(capsys).startswith(f"hurricane: error: {out}: cannot write ")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_budget_under_the_fastest_architecture_is_refused_before_training(
    ort_lut, tmp_path: Path, capsys
) -> None:
    """It was refused only once the supernet had trained, with a hint naming --latency-ms,
    a flag generate does not have."""
    db, spec, _ = ort_lut
    copy = tmp_path / "lut.sqlite"
    shutil.copy(db, copy)
    tiny = str(Path(__file__).parent / "spaces" / "tiny.toml")
    out = tmp_path / "gen"
    argv = ["generate", "--space", tiny, "--device", str(spec), "--db", str(copy)]
    argv += ["--out", str(out), "--k", "0", "--steps", "2", "--no-progress"]
    assert main([*argv, "--budget", "0.0001"]) == 2
    line = _error_line(capsys)
    assert "--budget 0.0001: no architecture fits; the fastest in this space is " in line, line
    assert " ms on ort (" in line and "give a budget of at least" in line
    assert "--latency-ms" not in line
    assert not (out / "ort" / "supernet").exists()
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        f'space = "{tiny}"\ndevices = ["{spec}"]\nbudgets = [0.0001]\ndb = "{copy}"\n'
        f'out = "{out}"\n[generate]\nk = 0\n'
    )
    assert main(["run", str(pipeline), "--no-progress"]) == 2
    assert f"{pipeline}: budgets: 0.0001: no architecture fits" in _error_line(capsys)
