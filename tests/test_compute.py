"""Where training computes (hurricane.compute): the torch device, precision, process groups.

This machine has no GPU: the CUDA branches are checked with torch's CUDA queries patched
(the code that resolves devices is the same that runs on a GPU machine), and the training
itself in fp32, bf16 and fp16 on the CPU."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch

from hurricane.compute import (
    Compute,
    ComputeError,
    compute_for,
    main_only,
    resolve_torch_device,
    share,
)
from hurricane.tomlcheck import ConfigError
from hurricane.train import TrainConfig, Trainer, train
from pipelines.cli import main
from pipelines.config import parse_pipeline

TINY = str(Path(__file__).parent / "spaces" / "tiny.toml")


def test_the_torch_device_choice(monkeypatch) -> None:
    assert not torch.cuda.is_available()  # this machine; CI's too
    assert resolve_torch_device("auto") == torch.device("cpu")
    assert resolve_torch_device("CPU") == torch.device("cpu")
    for asked in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(ComputeError, match="no CUDA GPU .* --torch-device cpu or auto"):
            resolve_torch_device(asked)
    with pytest.raises(ComputeError, match=r"expected auto\|cpu\|cuda\|cuda:N .*--device"):
        resolve_torch_device("gpu0")
    # A machine with two GPUs, as torch would report it.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_torch_device("auto") == torch.device("cuda", 0)
    assert resolve_torch_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ComputeError, match="cuda:2 asked for, but this machine has 2 GPU"):
        resolve_torch_device("cuda:2")
    # Under torchrun each process takes its local rank's GPU, and cannot name another.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_torch_device("cuda") == torch.device("cuda", 1)
    assert resolve_torch_device("auto") == torch.device("cuda", 1)
    with pytest.raises(ComputeError, match="CUDA_VISIBLE_DEVICES"):
        resolve_torch_device("cuda:0")


def test_asking_for_cuda_here_is_one_line(tmp_path: Path, capsys) -> None:
    args = ["train", "--space", TINY, "--out", str(tmp_path / "r"), "--steps", "1"]
    assert main([*args, "--torch-device", "cuda"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA GPU" in err and "'cuda'" in err
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match=r"train\.torch_device.*no CUDA GPU"):
        parse_pipeline(
            {
                "name": "p",
                "space": "demo",
                "devices": ["local-litert"],
                "budgets": [0.1],
                "train": {"torch_device": "cuda"},
            }
        )
    with pytest.raises(ConfigError, match=r"train\.precision.*fp32, bf16, fp16"):
        parse_pipeline(
            {
                "name": "p",
                "space": "demo",
                "devices": ["local-litert"],
                "budgets": [0.1],
                "train": {"precision": "int4"},
            }
        )
    p = parse_pipeline(
        {
            "name": "p",
            "space": "demo",
            "devices": ["local-litert"],
            "budgets": [0.1],
            "train": {"torch_device": "cpu", "precision": "bf16", "workers": 3},
        }
    )
    cfg = p.generate.train_config(p.space, p.data, tmp_path, 0, False, p.train)
    assert (cfg.torch_device, cfg.precision, cfg.workers) == ("cpu", "bf16", 3)


def test_precision_autocasts_over_fp32_weights() -> None:
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 8, 8)
    assert compute_for("cpu", "fp32").scaler() is None
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        c = compute_for("cpu", precision, channels_last=True)
        with c.autocast():
            y = c.module(conv)(c.batch(x))
        assert y.dtype == dtype and conv.weight.dtype == torch.float32
        assert c.batch(x).is_contiguous(memory_format=torch.channels_last)
    assert isinstance(compute_for("cpu", "fp16").scaler(), torch.amp.GradScaler)
    assert compute_for("cpu", "bf16").scaler() is None
    with pytest.raises(ComputeError, match="precision 'fp8'"):
        Compute(torch.device("cpu"), "fp8")


def _run(tmp_path: Path, name: str, **kw) -> dict:
    cfg = TrainConfig(
        space=TINY,
        out=str(tmp_path / name),
        steps=4,
        batch_size=32,
        train_limit=256,
        eval_limit=100,
        eval_paths=1,
        progress=False,
        seed=1,
        torch_device="cpu",
        **kw,
    )
    return train(cfg)


def test_a_bf16_and_an_fp16_run_train_and_say_so(tmp_path: Path, single_thread) -> None:
    fp32 = _run(tmp_path, "fp32")
    bf16 = _run(tmp_path, "bf16", precision="bf16", channels_last=True)
    fp16 = _run(tmp_path, "fp16", precision="fp16")
    for s, precision in ((fp32, "fp32"), (bf16, "bf16"), (fp16, "fp16")):
        on = s["trained_on"]
        assert on["precision"] == precision and on["torch_device"] == "cpu"
        assert on["torch_device_name"] == "cpu"
        assert 0 < s["history"][-1]["train_loss"] < 5
    assert bf16["trained_on"]["channels_last"] is True
    # Autocast changed the arithmetic, so the weights differ; they are still fp32.
    assert len({fp32["state_sha256"], bf16["state_sha256"], fp16["state_sha256"]}) == 3
    state = torch.load(tmp_path / "bf16" / "supernet.pt", weights_only=True)["model"]
    assert {v.dtype for k, v in state.items() if v.is_floating_point()} == {torch.float32}
    ckpt = torch.load(tmp_path / "fp16" / "checkpoint.pt", weights_only=True)
    assert ckpt["scaler"]["scale"] > 0  # the fp16 loss scale resumes with the run
    on_disk = json.loads((tmp_path / "bf16" / "summary.json").read_text())
    assert on_disk["trained_on"] == bf16["trained_on"]


def test_changing_the_precision_is_another_run(tmp_path: Path, single_thread) -> None:
    _run(tmp_path, "r")
    with pytest.raises(Exception, match=r"precision: 'fp32' there, 'bf16' now"):
        _run(tmp_path, "r", precision="bf16")
    # Where it computes may change between sessions: the same run goes on.
    again = _run(tmp_path, "r", workers=2)
    assert again["steps"] == 4


def test_micro_batches_must_split_the_batch(tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"does not split into 3 equal shards.*1 process"):
        Trainer(TrainConfig(space=TINY, out=str(tmp_path), batch_size=32, micro_batches=3))


def _ranks(rank: int, port: int, out: str) -> None:
    os.environ.update(
        WORLD_SIZE="2", RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.distributed.init_process_group("gloo")
    seen: list[int] = []

    def fitness(i: int) -> float:
        seen.append(i)
        return i * 10.0

    results = share(list(range(7)), fitness)
    chosen = main_only(lambda: f"rank {rank} decided")
    Path(out, f"rank{rank}.json").write_text(json.dumps([seen, results, chosen]))
    torch.distributed.destroy_process_group()


def test_share_splits_the_work_and_main_only_decides_once(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ranks, args=(port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0[0] == [0, 2, 4, 6] and r1[0] == [1, 3, 5]  # each evaluated its share
    assert r0[1] == r1[1] == [i * 10.0 for i in range(7)]  # and both hold every result
    assert r0[2] == r1[2] == "rank 0 decided"
    # Without a process group: a plain map, a plain call.
    assert share([1, 2], lambda i: -i) == [-1, -2] and main_only(lambda: 5) == 5


RUNTIMES = (
    "paramiko",
    "lightgbm",
    "openvino",
    "ai_edge_litert",
    "litert_torch",
    "onnxruntime",
    "onnx",
    "nncf",
    "zigzag",
)

_WITHOUT_RUNTIMES = f"""
import runpy, sys
class Hide:  # as if not installed: every finder says it has no such module
    def __init__(self, inner):
        self.inner = inner
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {RUNTIMES!r}:
            return None
        return self.inner.find_spec(name, path, target)
    def invalidate_caches(self):
        getattr(self.inner, "invalidate_caches", lambda: None)()
sys.meta_path[:] = [Hide(f) if hasattr(f, "find_spec") else f for f in sys.meta_path]
import hurricane.two_stage, hurricane.final, hurricane.loader
sys.argv = ["hurricane"] + sys.argv[1:]
runpy.run_module("pipelines.cli", run_name="__main__")
"""


def test_training_needs_no_device_runtime(tmp_path: Path) -> None:
    """A GPU machine has torch and no device runtimes (no paramiko, LightGBM, OpenVINO,
    LiteRT): the training path must import none of them."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "r"
    cmd = [sys.executable, "-c", _WITHOUT_RUNTIMES, "train", "--space", TINY, "--out", str(out)]
    cmd += ["--steps", "2", "--batch-size", "32", "--train-limit", "64", "--eval-paths", "1"]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd + ["--no-progress"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "supernet.pt").is_file()
