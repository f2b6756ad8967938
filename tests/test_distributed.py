"""Training and search across processes with torch's own engine: ``torchrun`` with gloo on
this machine's CPU, as NCCL runs it on GPUs (the code path is the same; only the backend and
the torch device differ). Rank 0 alone writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from hurricane.space_file import load_space
from hurricane.supernet import Supernet
from hurricane.synthetic import write_imagefolder

ROOT = Path(__file__).resolve().parents[1]
SPACES = Path(__file__).parent / "spaces"
TINY, TINY_RGB = str(SPACES / "tiny.toml"), str(SPACES / "tiny_rgb.toml")
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
TORCHRUN = str(Path(sys.executable).parent / "torchrun")
CLI = ["-m", "pipelines.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def train_args(out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--out",
        str(out),
        "--steps",
        "6",
        "--batch-size",
        "16",
        "--eval-paths",
        "0",
        "--threads",
        "1",
        "--seed",
        "2",
        "--no-progress",
        *extra,
    ]


def params(out: Path) -> dict[str, torch.Tensor]:
    """The trained supernet's parameters (batch-norm running statistics are each process's
    own under DDP, as torch keeps them: rank 0's are saved)."""
    state = torch.load(out / "supernet.pt", map_location="cpu", weights_only=True)["model"]
    names = {n for n, _ in initial(out).named_parameters()}
    return {k: v for k, v in state.items() if k in names}


def initial(out: Path) -> Supernet:
    """The supernet as the run in ``out`` started (seeded as the trainer seeds it)."""
    torch.manual_seed(2)
    return Supernet(load_space(json.loads((out / "summary.json").read_text())["config"]["space"]))


def assert_same_weights(a: Path, b: Path) -> None:
    pa, pb = params(a), params(b)
    assert pa.keys() == pb.keys() and pa
    for name in pa:  # float sums in another order: equal to a few ulps, not bitwise
        torch.testing.assert_close(pa[name], pb[name], rtol=1e-4, atol=1e-6, msg=name)
    moved = sum(not torch.equal(p.detach(), pa[n]) for n, p in initial(a).named_parameters())
    assert moved > 10  # trained, not merely equal at initialisation


def test_imagefolder_under_torchrun_equals_one_process(tmp_path: Path) -> None:
    """Two processes, each with a loader worker, train what one process trains in two
    micro-batches (two loader workers): every shard has the same images, augmentation and
    dropout seed whoever computes it."""
    data = write_imagefolder(tmp_path / "img", classes=4, per_class=20, size=(40, 36))
    common = ["--space", TINY_RGB, "--data", f"imagefolder:{data}"]
    two, one = tmp_path / "two", tmp_path / "one"
    run(
        [TORCHRUN, "--standalone", "--nproc_per_node", "2", *CLI]
        + train_args(two, *common, "--workers", "1")
    )
    res = run([sys.executable, *CLI] + train_args(one, *common, "--micro-batches", "2"))
    assert "on torch device cpu (fp32)" in res.stdout
    s_two = json.loads((two / "summary.json").read_text())
    s_one = json.loads((one / "summary.json").read_text())
    assert s_two["world_size"] == 2 and s_two["ranks_in_sync"] is True
    assert s_two["trained_on"]["backend"] == "gloo" and s_two["trained_on"]["shards"] == 2
    assert s_one["trained_on"]["shards"] == 2 and s_one["trained_on"]["micro_batches"] == 2
    assert s_two["data"]["name"] == "imagefolder" and s_two["data"]["train"] == 72
    assert_same_weights(two, one)
    # Rank 0 wrote; nothing was written twice or half-written.
    assert sorted(p.name for p in two.iterdir()) == [
        "checkpoint.pt",
        "log.jsonl",
        "summary.json",
        "supernet.pt",
    ]


def test_two_nodes_on_loopback_equal_one_process(tmp_path: Path) -> None:
    """Two torchrun "nodes" (one process each) meeting at a rendezvous on 127.0.0.1, each
    with its own run folder as two machines would have: node 1 writes nothing, and the
    weights equal one process's with the batch in two micro-batches."""
    port = str(free_port())
    nodes = []
    for k in (0, 1):
        cmd = [
            TORCHRUN,
            "--nnodes",
            "2",
            "--node-rank",
            str(k),
            "--nproc-per-node",
            "1",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            port,
            *CLI,
            *train_args(tmp_path / f"node{k}", "--space", TINY, "--train-limit", "320"),
        ]
        nodes.append(
            subprocess.Popen(
                cmd, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    for proc in nodes:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    assert not (tmp_path / "node1").exists()
    one = tmp_path / "one"
    run(
        [sys.executable, *CLI]
        + train_args(one, "--space", TINY, "--train-limit", "320", "--micro-batches", "2")
    )
    summary = json.loads((tmp_path / "node0" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_in_sync"] is True
    assert_same_weights(tmp_path / "node0", one)


def test_search_under_torchrun_equals_one_process(ort_lut, tmp_path: Path) -> None:
    """Two ranks split each generation's candidates and gather their fitnesses: the search
    ends where one process's does, with the same history, written once."""
    from tests.test_final import copy_db

    db, spec, _ = ort_lut
    sup = tmp_path / "sup"
    run([sys.executable, *CLI] + train_args(sup, "--space", TINY, "--train-limit", "320"))
    outs = {}
    logs = {}
    for name, launch in (
        ("one", [sys.executable]),
        ("two", [TORCHRUN, "--standalone", "--nproc_per_node", "2"]),
    ):
        out, here = tmp_path / name, tmp_path / f"db-{name}"
        here.mkdir()
        logs[name] = run(
            launch
            + CLI
            + [
                "search",
                "--space",
                TINY,
                "--device",
                str(spec),
                "--db",
                str(copy_db(db, here)),
                "--budget",
                "80%",
                "--supernet",
                str(sup),
                "--population",
                "6",
                "--generations",
                "2",
                "--mutations",
                "3",
                "--crossovers",
                "2",
                "--eval-limit",
                "200",
                "--no-measure",
                "--final-steps",
                "0",
                "--out",
                str(out),
            ]
        )
        outs[name] = json.loads((out / "result.json").read_text())
    one, two = outs["one"], outs["two"]
    assert "2 processes share each generation's fitness evaluations" in logs["two"].stderr
    assert "processes share" not in logs["one"].stderr
    assert two["best"] == one["best"] and two["fitness"] == one["fitness"]
    assert two["top"] == one["top"] and two["evaluated"] == one["evaluated"] >= 6
    hist = (tmp_path / "two" / "search" / "history.jsonl").read_text().splitlines()
    assert [json.loads(h)["generation"] for h in hist] == [0, 1]
