"""Deployment configurations as a hardware space (devices/deployment.py): validation, the
configuration campaign over a real sshd (one LUT table per configuration, artifacts shared,
resumable) and co-exploration over them."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest

from devices.artifacts import ArtifactCache
from devices.deployment import DeploymentSpaceError, load_deployment_space
from hurricane.space_file import load_space
from profilers.campaign import space_instances
from profilers.configurations import profile_configurations
from tests.sshd import SSHServer

TINY = str(Path(__file__).parent / "spaces" / "tiny.toml")
QUICK = "[measure]\nwarmup = 1\nrounds = 3\nruns = 3\nmin_round_ms = 0\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ('device = "local-litert"\ncores = 3\n', "cores", "unknown field"),
        (
            'device = "local-litert"\nprecision = ["fp32", "fp16"]\n',
            "precision",
            "offers fp32, int8",
        ),
        ('device = "local-litert"\nthreads = [1, 64]\n', "threads", "more than this machine"),
        ('device = "local-onnxruntime"\nxnnpack = [true]\n', "xnnpack", "only LiteRT takes this"),
        ('device = "local-litert"\nthreads = []\n', "threads", "non-empty list"),
        ('device = "local-litert"\naffinity = [[0, 99]]\n', "affinity", "CPU 99 does not exist"),
        ('device = "local-litert"\nkind = "accelerator"\n', "kind", 'kind = "deployment"'),
        ('device = "local-openvino"\nhint = ["FAST"]\n', "hint", "OpenVINO's hints are"),
        ('device = "local-litert"\nstreams = [2]\n', "streams", "only OpenVINO takes this"),
        ('device = "local-openvino"\nstreams = [64]\n', "streams", "more than this machine"),
    ],
)
def test_a_bad_deployment_space_is_one_line(tmp_path: Path, body, field, says) -> None:
    path = write(tmp_path, "dep.toml", body)
    with pytest.raises(DeploymentSpaceError) as err:
        load_deployment_space(path)
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and f"{path}: {field}:" in msg and says in msg, msg


def test_every_combination_is_a_device_of_its_own(tmp_path: Path) -> None:
    path = write(
        tmp_path, "dep.toml", 'device = "local-litert"\nthreads = [1, 2]\nxnnpack = [true, false]\n'
    )
    dep = load_deployment_space(path)
    pairs = dep.configurations()
    names = [spec.name for _, spec in pairs]
    assert names == [
        "local-litert.t1-fp32-xnn1",
        "local-litert.t1-fp32-xnn0",
        "local-litert.t2-fp32-xnn1",
        "local-litert.t2-fp32-xnn0",
    ]
    cfg, spec = pairs[3]
    assert spec.runtime.threads == 2 and spec.runtime.xnnpack is False
    assert cfg.knobs == {
        "device": "local-litert",
        "threads": 2,
        "precision": "fp32",
        "xnnpack": False,
    }
    assert spec.runtime.agent_options()["xnnpack"] is False
    # The ready spec of a configuration of a shipped example loads back as that device.
    from devices.deployment import spec_toml
    from devices.spec import load_device

    ready = write(
        tmp_path, "ready.toml", spec_toml(dep, dict(threads=2, precision="fp32", xnnpack=False))
    )
    back = load_device(ready)
    assert back.name == spec.name and back.runtime == spec.runtime
    assert back.measure == spec.measure and back.kind == spec.kind


def test_openvino_hint_and_streams_are_knobs(tmp_path: Path) -> None:
    from devices.deployment import spec_toml
    from devices.spec import load_device

    path = write(
        tmp_path,
        "ov.toml",
        'device = "local-openvino"\nhint = ["LATENCY", "THROUGHPUT"]\nstreams = [1, 2]\n',
    )
    dep = load_deployment_space(path)
    specs = [spec for _, spec in dep.configurations()]
    assert [s.name for s in specs] == [
        "local-openvino.t1-fp32-latency-s1",
        "local-openvino.t1-fp32-latency-s2",
        "local-openvino.t1-fp32-throughput-s1",
        "local-openvino.t1-fp32-throughput-s2",
    ]
    opts = specs[3].runtime.agent_options()
    assert opts["performance_hint"] == "THROUGHPUT" and opts["streams"] == 2
    # The device spec sets neither: its own hint (LATENCY) with the first stream count.
    assert dep.own_config() == "local-openvino.t1-fp32-latency-s1"
    ready = write(tmp_path, "ready.toml", spec_toml(dep, dep.configurations()[3][0].knobs))
    assert load_device(ready).runtime == specs[3].runtime


def test_the_configuration_campaign_over_ssh(tmp_path: Path) -> None:
    """Two thread counts on a board reached through a real sshd: two LUT tables, the same
    artifacts for both (converted once), and a second run times nothing."""
    space = load_space(TINY)
    some = space_instances(space)[:6]
    cache = ArtifactCache(tmp_path / "cache")
    db = tmp_path / "lut.sqlite"
    with SSHServer() as server:
        write(
            tmp_path,
            "board.toml",
            f'name = "board"\nkind = "mobile-cpu"\npython = "{sys.executable}"\n'
            f'[transport]\ntype = "ssh"\nhost = "{server.host}"\nport = {server.port}\n'
            f'user = "{server.user}"\nkey_file = "{server.client_key}"\n'
            f'known_hosts = "{server.known_hosts}"\n[runtime]\nname = "onnxruntime"\n' + QUICK,
        )
        dep = load_deployment_space(
            write(tmp_path, "dep.toml", 'device = "board.toml"\nthreads = [1, 2]\n')
        )
        first = profile_configurations(space, dep, db, cache, progress=False, instances=some)
        artifacts = sorted(p.name for p in (tmp_path / "cache").rglob("*.onnx"))
        again = profile_configurations(space, dep, db, cache, progress=False, instances=some)
    assert list(first) == ["board.t1-fp32", "board.t2-fp32"]
    assert [(r.measured + r.noisy, r.errors) for r in first.values()] == [(6, 0), (6, 0)]
    assert [r.measured + r.noisy for r in again.values()] == [0, 0]
    assert len(artifacts) == len({i.key for i in some}) + 1  # and the drift reference
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT d.name, COUNT(*) FROM entries e JOIN devices d ON d.id = e.device_id "
            "WHERE e.status IN ('ok', 'noisy') GROUP BY d.name ORDER BY d.name"
        ).fetchall()
    assert rows == [("board.t1-fp32", 6), ("board.t2-fp32", 6)]


def test_coexplore_over_deployment_configurations(tmp_path: Path, capsys) -> None:
    from hurricane.train import TrainConfig, train
    from pipelines.cli import main

    sup = tmp_path / "sup"
    train(
        TrainConfig(
            space=TINY,
            out=str(sup),
            steps=2,
            batch_size=32,
            train_limit=128,
            eval_paths=0,
            progress=False,
            threads=1,
        )
    )
    write(
        tmp_path,
        "ort.toml",
        'name = "ort"\nkind = "cpu"\n[runtime]\nname = "onnxruntime"\n' + QUICK,
    )
    dep = write(tmp_path, "dep.toml", 'device = "ort.toml"\nthreads = [1, 2]\n')
    out = tmp_path / "co"
    args = ["coexplore", "--space", TINY, "--hw-space", str(dep), "--supernet", str(sup)]
    args += ["--db", str(tmp_path / "lut.sqlite"), "--out", str(out), "--no-progress"]
    args += ["--population", "4", "--generations", "2", "--eval-limit", "100"]
    args += ["--latency-ms", "10", "--final-steps", "3"]
    assert main(args) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["hardware"]["config"] in ("ort.t1-fp32", "ort.t2-fp32")
    assert res["hardware"]["threads"] in (1, 2) and res["energy_mj"] is None
    assert res["configurations"] == 2 and res["latency_ms"] <= 10
    assert res["hardware"]["config"] in capsys.readouterr().out
    # A ready device spec for the chosen configuration: it loads, named and set as chosen.
    from devices.spec import load_device

    ready = load_device(out / "hardware.toml")
    assert res["hardware_files"] == [str(out / "hardware.toml")]
    assert ready.name == res["hardware"]["config"]
    assert ready.runtime.threads == res["hardware"]["threads"]
    assert ready.runtime.name == "onnxruntime" and ready.measure.rounds == 3
    # The bundle was timed under the chosen configuration and carries its spec.
    from pipelines.handoff import read_manifest

    m = read_manifest(res["final"]["bundle"])
    assert m["device"]["name"] == ready.name and m["hardware"]["spec"] == "hardware.toml"
    assert m["runtime"]["settings"]["threads"] == ready.runtime.threads
    assert m["hardware"]["knobs"] == {"threads": ready.runtime.threads, "precision": "fp32"}


def test_device_flag_stands_in_for_the_spaces_device(tmp_path: Path, capsys) -> None:
    ort = write(
        tmp_path,
        "ort.toml",
        'name = "ort"\nkind = "cpu"\n[runtime]\nname = "onnxruntime"\n' + QUICK,
    )
    dep = write(tmp_path, "dep.toml", 'device = "local-litert"\nthreads = [1, 2]\n')
    space = load_deployment_space(dep, str(ort))
    assert space.device.name == "ort"
    assert [s.name for _, s in space.configurations()] == ["ort.t1-fp32", "ort.t2-fp32"]
    # An accelerator space has no device to stand in for.
    from pipelines.cli import main

    accel = str(Path(__file__).parent / "spaces" / "accel-two.toml")
    args = ["coexplore", "--space", TINY, "--hw-space", accel, "--supernet", str(tmp_path)]
    assert main([*args, "--device", str(ort), "--latency-ms", "1"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is an accelerator design space" in err, err
