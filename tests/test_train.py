"""SPOS training on real Fashion-MNIST: learning, exact resume after a kill, 2-process DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hurricane.errors import UserError
from hurricane.space_file import load_space
from hurricane.supernet import Supernet
from hurricane.train import TrainConfig, Trainer, parse_layers, train

ROOT = Path(__file__).resolve().parents[1]
TINY = str(Path(__file__).parent / "spaces" / "tiny.toml")
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def cli_args(out: Path, steps: int, *extra: str) -> list[str]:
    return [
        "train",
        "--space",
        TINY,
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--batch-size",
        "32",
        "--train-limit",
        "640",
        "--eval-limit",
        "200",
        "--eval-paths",
        "1",
        "--threads",
        "1",
        "--no-progress",
        *extra,
    ]


def run_cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipelines.cli", *args]
    return subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300, **kw)


def load_state(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "supernet.pt", map_location="cpu", weights_only=True)["model"]


def kill_at_first_checkpoint(args: list[str], out: Path) -> int:
    """Start ``hurricane ARGS``, SIGKILL it as soon as ``out`` holds a checkpoint; the step
    that checkpoint saved."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", *args],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt = out / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    return torch.load(ckpt, weights_only=True)["step"]


def test_parse_layers() -> None:
    assert parse_layers("0-2,5", 6) == [0, 1, 2, 5]
    assert parse_layers(None, 6) is None and parse_layers("all", 6) is None
    with pytest.raises(UserError, match="outside layers 0..5"):
        parse_layers("4-9", 6)
    with pytest.raises(UserError, match="not a layer index"):
        parse_layers("a", 6)


def test_fixed_path_learns_fashion_mnist(tmp_path: Path, single_thread) -> None:
    """One fixed path trained briefly on real data beats chance by a wide margin."""
    cfg = TrainConfig(
        space=TINY,
        out=str(tmp_path / "run"),
        steps=120,
        batch_size=64,
        lr=0.1,
        sample_layers=[],
        fixed="mb_k3_e3-mb_k3_e3-mb_k3_e3",
        train_limit=8000,
        eval_limit=1000,
        eval_paths=1,
        progress=False,
    )
    summary = train(cfg)
    assert summary["steps"] == 120
    acc = summary["history"][-1]["val_acc_paths"][0]
    # Five times chance. The exact figure moves a few points between CPUs (0.579 on an
    # AVX512-BF16 host, above 0.6 elsewhere): float rounding differs over 120 SGD steps.
    assert acc > 0.5, summary["history"]
    assert summary["data"]["name"] == "fashion-mnist"


def test_sampling_restricted_to_layers(tmp_path: Path, single_thread) -> None:
    cfg = TrainConfig(
        space=TINY,
        out=str(tmp_path / "run"),
        steps=3,
        batch_size=32,
        sample_layers=[1],
        fixed="ds_k3@0.5-skip-shuffle_k3",
        train_limit=256,
        eval_paths=0,
        progress=False,
    )
    tr = Trainer(cfg)
    paths = [tr.path_at(s) for s in range(60)]
    assert {p.ops[0] for p in paths} == {"ds_k3"} and {p.widths[0] for p in paths} == {0.5}
    assert {p.ops[2] for p in paths} == {"shuffle_k3"}
    assert len({p.ops[1] for p in paths}) == 4  # the sampled layer sees every candidate
    assert tr.path_at(7) == tr.path_at(7)


def test_resume_after_kill_equals_uninterrupted(tmp_path: Path) -> None:
    steps = 80
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = run_cli(cli_args(whole, steps, "--ckpt-every", "1000"))
    assert done.returncode == 0, done.stderr

    step_at_kill = kill_at_first_checkpoint(cli_args(killed, steps, "--ckpt-every", "4"), killed)
    assert 0 < step_at_kill < steps
    assert not (killed / "summary.json").exists()

    resumed = run_cli(cli_args(killed, steps, "--ckpt-every", "4"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {killed} at step" in resumed.stderr

    s_whole = json.loads((whole / "summary.json").read_text())
    s_killed = json.loads((killed / "summary.json").read_text())
    assert s_killed["resumed_from"] and s_killed["resumed_from"][0] >= step_at_kill
    assert s_killed["steps"] == s_whole["steps"] == steps
    a, b = load_state(whole), load_state(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert s_killed["state_sha256"] == s_whole["state_sha256"]
    # Per-epoch records, evaluations included, match too (timings aside).
    strip = lambda hist: [{k: v for k, v in h.items() if k != "seconds"} for h in hist]  # noqa: E731
    assert strip(s_killed["history"]) == strip(s_whole["history"])


def test_ctrl_c_saves_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", *cli_args(out, 400, "--ckpt-every", "1000")],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = out / "log.jsonl"  # written after the first epoch (20 steps)
    deadline = time.time() + 120
    while not log.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "run again to resume" in err
    step = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert 20 <= step < 400


def test_changed_config_is_refused(tmp_path: Path, single_thread) -> None:
    base = dict(
        space=TINY,
        out=str(tmp_path / "r"),
        steps=2,
        batch_size=32,
        train_limit=128,
        eval_paths=0,
        progress=False,
    )
    train(TrainConfig(**base))
    with pytest.raises(UserError, match=r"lr: 0.1 there, 0.2 now.*--fresh"):
        train(TrainConfig(**{**base, "lr": 0.2}))
    again = train(TrainConfig(**{**base, "lr": 0.2}), fresh=True)
    assert again["config"]["lr"] == 0.2 and again["resumed_from"] == []


class _Payload:
    """Pickles into a call that creates ``marker``: what a hostile .pt file would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_init_and_checkpoint_files_load_tensors_only(tmp_path: Path, single_thread) -> None:
    """``--init`` takes someone else's supernet and a run folder may be copied from
    elsewhere: a file that needs a full unpickle (which would run code) is refused in one
    line naming it, and what Hurricane itself writes loads and resumes as before."""
    base = dict(space=TINY, steps=2, batch_size=32, train_limit=128, eval_paths=0)
    base.update(progress=False)
    first = train(TrainConfig(**base, out=str(tmp_path / "a")))
    # Its own files load with weights_only=True: resuming a finished run and starting
    # from its supernet both work.
    assert train(TrainConfig(**base, out=str(tmp_path / "a")))["steps"] == first["steps"]
    init = tmp_path / "a" / "supernet.pt"
    train(TrainConfig(**base, out=str(tmp_path / "b"), init=str(init)))
    marker = tmp_path / "ran.txt"
    evil = tmp_path / "evil.pt"
    torch.save({"space": "tiny", "model": _Payload(marker)}, evil)
    with pytest.raises(UserError) as err:
        train(TrainConfig(**base, out=str(tmp_path / "c"), init=str(evil)))
    msg = str(err.value)
    assert msg.startswith(f"{evil}: not a plain supernet (--init)") and "\n" not in msg
    assert not marker.exists()
    ckpt = tmp_path / "a" / "checkpoint.pt"
    saved = torch.load(ckpt, weights_only=True)
    torch.save({**saved, "history": _Payload(marker)}, ckpt)
    with pytest.raises(UserError, match="checkpoint.pt: not a plain training checkpoint"):
        train(TrainConfig(**base, out=str(tmp_path / "a")))
    assert not marker.exists()


def test_ddp_two_processes(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    steps, seed = 6, 3
    torchrun = str(Path(sys.executable).parent / "torchrun")
    cmd = [
        torchrun,
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "pipelines.cli",
        *cli_args(out, steps, "--seed", str(seed), "--eval-paths", "0"),
    ]
    res = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_in_sync"] is True
    assert summary["steps"] == steps

    # Each process took half of every global batch; gradients were averaged, so ops no path
    # used are exactly as initialised (DDP must not decay or move them) and used ones moved.
    space = load_space(TINY)
    torch.manual_seed(seed)
    init = Supernet(space).state_dict()
    final = load_state(out)
    cfg = TrainConfig(
        space=TINY, out=str(tmp_path / "x"), steps=steps, batch_size=32, train_limit=640, seed=seed
    )
    trainer = Trainer(cfg)
    used = {(i, op) for s in range(steps) for i, op in enumerate(trainer.path_at(s).ops)}
    moved = unmoved = 0
    for i, layer in enumerate(space.layers):
        for j, op in enumerate(layer.ops):
            keys = [k for k in init if k.startswith(f"choices.{i}.{j}.") and "weight" in k]
            if not keys:
                continue  # identity skip
            same = all(torch.equal(init[k], final[k]) for k in keys)
            if (i, op) in used:
                if op == "skip":
                    continue  # identity when its widths matched: nothing to train
                assert not same, f"layer {i} {op} was trained but did not change"
                moved += 1
            else:
                assert same, f"layer {i} {op} was never sampled but changed"
                unmoved += 1
    assert moved and unmoved


def _diverging_rank(rank: int, port: int, out: str) -> None:
    """One of two training processes; rank 1's weights are nudged just before the end, as
    a bug that let the ranks drift apart would leave them."""
    os.environ.update(
        WORLD_SIZE="2", RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    cfg = TrainConfig(
        space=TINY, out=out, steps=1, batch_size=32, train_limit=64, eval_paths=0, progress=False
    )
    trainer = Trainer(cfg)
    finish = trainer._finish

    def drifted_finish(*args):
        if rank == 1:
            with torch.no_grad():
                next(trainer.net.parameters()).add_(1.0)
        return finish(*args)

    trainer._finish = drifted_finish
    summary = trainer.train()
    Path(out, f"rank{rank}.json").write_text(json.dumps(summary["ranks_in_sync"]))


def test_ranks_in_sync_is_false_when_the_ranks_weights_differ(tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "drift"
    mp.spawn(_diverging_rank, args=(port, str(out)), nprocs=2, join=True)
    assert [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)] == [False, False]
    assert json.loads((out / "summary.json").read_text())["ranks_in_sync"] is False


def test_image_files_train_the_same_with_any_workers_and_across_a_kill(tmp_path: Path) -> None:
    """ImageFolder data through the DataLoader: a run with two loader workers, killed after a
    checkpoint and resumed with none, ends with exactly the weights of an uninterrupted run
    with two workers (each image's augmentation is seeded by seed, step and image)."""
    from hurricane.synthetic import write_imagefolder

    data = write_imagefolder(tmp_path / "img", classes=4, per_class=20, size=(40, 36))
    rgb = str(Path(__file__).parent / "spaces" / "tiny_rgb.toml")

    def args(out: Path, workers: str, ckpt: str) -> list[str]:
        return [
            "train",
            "--space",
            rgb,
            "--data",
            f"imagefolder:{data}",
            "--out",
            str(out),
            "--steps",
            "24",
            "--batch-size",
            "16",
            "--eval-paths",
            "1",
            "--threads",
            "1",
            "--workers",
            workers,
            "--ckpt-every",
            ckpt,
            "--no-progress",
        ]

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = run_cli(args(whole, "2", "1000"))
    assert done.returncode == 0, done.stderr
    step_at_kill = kill_at_first_checkpoint(args(killed, "2", "2"), killed)
    assert 0 < step_at_kill < 24
    resumed = run_cli(args(killed, "0", "2"))
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_state(whole), load_state(killed)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    s_whole = json.loads((whole / "summary.json").read_text())
    s_killed = json.loads((killed / "summary.json").read_text())
    assert s_whole["trained_on"]["workers"] == 2 and s_killed["trained_on"]["workers"] == 0
    assert s_killed["resumed_from"] and s_killed["state_sha256"] == s_whole["state_sha256"]


SHARED_SPACE = """\
name = "shared"
channel_divisor = 4
widths = [0.5, 1.0]
ops = ["mb_k3_e3", "mb_k5_e6", "ds_k3", "skip"]

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

[[layers]]
cout = 16
"""


def test_a_shared_supernet_is_searched_and_inherited_with_its_sharing(
    tmp_path: Path, single_thread
) -> None:
    """The sharing a supernet was trained with travels in its file: the search and a final
    model started from it rebuild the same blocks, with no flag to repeat."""
    from hurricane.final import train_final
    from hurricane.two_stage import load_supernet
    from pipelines.cli import main

    space_file = tmp_path / "shared.toml"
    space_file.write_text(SHARED_SPACE)
    out = tmp_path / "sup"
    args = cli_args(out, 4, "--share", "family")
    args[args.index(TINY)] = str(space_file)
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["share"] == "family"
    net = load_supernet(load_space(space_file), out / "supernet.pt")
    assert net.share == "family" and [len(c) for c in net.choices] == [3, 3]
    fin = train_final(
        str(space_file),
        "mb_k3_e3-mb_k5_e6@0.5",
        tmp_path / "fin",
        2,
        init=out / "supernet.pt",
        batch_size=32,
        progress=False,
    )
    assert fin["steps"] == 2
    with pytest.raises(UserError, match="share: 'all' is not a weight-sharing rule"):
        Trainer(TrainConfig(space=str(space_file), share="all", train_limit=256, progress=False))
