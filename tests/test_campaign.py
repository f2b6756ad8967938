"""Profiling campaigns end to end: real converters, real agent, real sshd, real SQLite."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devices.artifacts import ArtifactCache
from devices.spec import load_device
from devices.transport import TransportError
from hurricane.errors import UserError
from hurricane.space_file import load_space
from profilers.campaign import profile, space_instances
from profilers.measure import latency_of, round_cv
from profilers.session import AgentSession
from tests.sshd import SSHServer

TINY = Path(__file__).parent / "spaces" / "tiny.toml"
MEASURE = (
    "[measure]\nwarmup = 1\nrounds = 3\nruns = 3\nmin_round_ms = 0\nbatch = 8\n"
    "cv_threshold = 10.0\ndrift_threshold = 0\n"  # these tests count batches; see test_drift
)


def spec_file(tmp_path: Path, body: str, name: str = "dev") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'name = "{name}"\n{body}\n{MEASURE}')
    return path


def rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT key, status, median_ms, samples FROM entries").fetchall()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> ArtifactCache:
    return ArtifactCache(tmp_path_factory.mktemp("artifacts"))


def test_local_campaign_resumes_without_duplicates(tmp_path: Path, cache, single_thread) -> None:
    space = load_space(TINY)
    spec = load_device(spec_file(tmp_path, 'kind = "cpu"\n[runtime]\nname = "onnxruntime"'))
    db = tmp_path / "lut.sqlite"
    first = profile(space, spec, db, cache=cache, progress=False, limit=10)
    assert first.new_entries == 10 and first.already_done == 0
    before = {r[0]: r for r in rows(db)}
    second = profile(space, spec, db, cache=cache, progress=False)
    n = len(space_instances(space))
    assert second.already_done == 10 and second.new_entries == n - 10
    after = rows(db)
    assert len(after) == len({r[0] for r in after}) == n  # every key once
    assert all(before[k] == r for r in after if (k := r[0]) in before)  # first run untouched
    assert {r[1] for r in after} == {"ok"}
    assert {space.stem_instance().key, *(i.key for i in space.head_instances())} <= {
        r[0] for r in after
    }
    third = profile(space, spec, db, cache=cache, progress=False)
    assert third.new_entries == 0 and third.already_done == n
    # Entries flagged noisy (say, while something else loaded the CPU) can be measured again.
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(
            "UPDATE entries SET status = 'noisy' WHERE key IN "
            "(SELECT key FROM entries ORDER BY key LIMIT 3)"
        )
    fourth = profile(space, spec, db, cache=cache, progress=False, remeasure_noisy=True)
    assert fourth.new_entries == 3 and len(rows(db)) == n


class StopServerAfter(AgentSession):
    """The real session; after a few batches the test stops the device's sshd entirely,
    as a rebooting board or a pulled cable would."""

    server: SSHServer
    batches = 0

    def measure(self, items, seed=0):
        type(self).batches += 1
        if type(self).batches == 3:
            self.server.stop()
        return super().measure(items, seed)


def test_ssh_campaign_connection_lost_then_resumed(tmp_path: Path, cache, single_thread) -> None:
    space = load_space(TINY)
    db = tmp_path / "lut.sqlite"
    with SSHServer() as server:
        body = (
            f'kind = "mobile-cpu"\npython = "{sys.executable}"\n'
            f'[transport]\ntype = "ssh"\nhost = "{server.host}"\nport = {server.port}\n'
            f'user = "{server.user}"\nkey_file = "{server.client_key}"\n'
            f'known_hosts = "{server.known_hosts}"\nconnect_timeout_s = 2\n'
            '[runtime]\nname = "onnxruntime"'
        )
        spec = load_device(spec_file(tmp_path, body, "board"))
        StopServerAfter.server = server
        with pytest.raises(TransportError):
            profile(space, spec, db, cache=cache, progress=False, session_factory=StopServerAfter)
        saved = {r[0]: r for r in rows(db)}
        assert len(saved) == 16  # the two batches that finished, committed as they came
        server.start()
        report = profile(space, spec, db, cache=cache, progress=False)
        assert report.already_done == 16
        assert report.fingerprint["cores"] >= 1
    final = rows(db)
    assert len(final) == len({r[0] for r in final}) == len(space_instances(space))
    assert all(saved[r[0]] == r for r in final if r[0] in saved)
    with sqlite3.connect(db) as conn:
        statuses = [s for (s,) in conn.execute("SELECT status FROM runs ORDER BY id")]
    assert statuses == ["interrupted", "done"]


def test_agent_crash_on_one_op_is_recorded(tmp_path: Path, cache, monkeypatch) -> None:
    space = load_space(TINY)
    victim = next(i for i in space.op_instances() if i.op == "shuffle_k3")
    monkeypatch.setenv("HURRICANE_AGENT_CRASH_ON", victim.key)
    spec = load_device(spec_file(tmp_path, 'kind = "cpu"\n[runtime]\nname = "onnxruntime"'))
    db = tmp_path / "lut.sqlite"
    report = profile(space, spec, db, cache=cache, progress=False, limit=20)
    by_key = {r[0]: r for r in rows(db)}
    assert by_key[victim.key][1] == "error"
    with sqlite3.connect(db) as conn:
        (error,) = conn.execute("SELECT error FROM entries WHERE key = ?", (victim.key,)).fetchone()
    assert "agent ended" in error
    assert report.errors == 1 and report.measured == 19
    assert sum(1 for r in by_key.values() if r[1] == "ok") == 19


def test_dsp_without_its_delegate_library(tmp_path: Path, cache) -> None:
    """The DSP path runs here on the CPU: full-int8 LiteRT through the same agent; a missing
    delegate library is an error on every entry, never a silent CPU run."""
    body = (
        'kind = "dsp"\n[runtime]\nname = "litert"\nprecision = "int8"\n'
        '[runtime.delegate]\nlibrary = "/nonexistent/libQnnTFLiteDelegate.so"\n'
    )
    spec = load_device(spec_file(tmp_path, body, "dsp"))
    db = tmp_path / "lut.sqlite"
    report = profile(load_space(TINY), spec, db, cache=cache, progress=False, limit=2)
    assert report.errors == 2
    with sqlite3.connect(db) as conn:
        errors = [e for (e,) in conn.execute("SELECT error FROM entries")]
    assert all("/nonexistent/libQnnTFLiteDelegate.so" in e for e in errors), errors


def test_whole_models_over_ssh_with_litert_and_openvino(tmp_path: Path, cache) -> None:
    """Complete subnets, end to end, through the same agent path, on the real LiteRT and
    OpenVINO runtimes behind a real sshd."""
    import torch

    from hurricane.subnet import build_subnet
    from profilers.campaign import measure_modules

    space = load_space(TINY)
    small = build_subnet(space, "skip@0.5-skip@0.5-ds_k3@0.5").eval()
    big = build_subnet(space, "mb_k3_e3-mb_k3_e3-mb_k3_e3").eval()
    x = torch.randn(1, 1, 28, 28)
    with SSHServer() as server:
        for runtime in ("litert", "openvino"):
            body = (
                f'kind = "mobile-cpu"\npython = "{sys.executable}"\n'
                f'[transport]\ntype = "ssh"\nhost = "{server.host}"\nport = {server.port}\n'
                f'user = "{server.user}"\nkey_file = "{server.client_key}"\n'
                f'known_hosts = "{server.known_hosts}"\n[runtime]\nname = "{runtime}"'
            )
            spec = load_device(spec_file(tmp_path, body, f"ssh-{runtime}"))
            res = measure_modules(spec, [("small", small, x), ("big", big, x)], cache)
            assert res["small"]["status"] == res["big"]["status"] == "ok", res
            assert res["big"]["median_ms"] > res["small"]["median_ms"] > 0
            assert res["big"]["runtime"].split()[0] == runtime


def test_min_of_round_medians_statistic(tmp_path: Path) -> None:
    res = {"median_ms": 1.2, "round_medians_ms": [1.0, 1.5, 1.02, 1.6, 1.01, 1.4, 1.3, 1.1]}
    assert latency_of(res) == 1.2 and latency_of(res, "min") == 1.0
    # Steady minimum: the lowest quarter of the rounds sits within 2% of it.
    assert round_cv(res, "min") == pytest.approx(0.02)
    assert round_cv(res) > 0.1  # the median view sees the disturbed rounds
    body = 'name = "d"\nkind = "cpu"\n[runtime]\nname = "onnxruntime"\n[measure]\n'
    (tmp_path / "ok.toml").write_text(body + 'statistic = "min"\n')
    assert load_device(tmp_path / "ok.toml").measure.statistic == "min"
    (tmp_path / "bad.toml").write_text(body + 'statistic = "mean"\n')
    with pytest.raises(UserError, match="bad.toml.*statistic"):
        load_device(tmp_path / "bad.toml")


def test_a_killed_campaigns_lock_is_taken_over_and_its_run_marked_interrupted(
    tmp_path: Path, capsys
) -> None:
    """SIGKILL leaves no chance to release the lock or close the run: the next campaign on
    the device takes the lock over (its pid no longer runs) and marks the run interrupted."""
    db = tmp_path / "lut.sqlite"
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "pipelines.cli", "profile", "--space", str(TINY)]
    cmd += ["--device", "local-onnxruntime", "--db", str(db), "--no-progress"]
    env = {**os.environ, "HURRICANE_CACHE": str(tmp_path / "hc")}
    first = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end:  # until it holds the lock and has opened its run
            assert first.poll() is None
            try:
                with sqlite3.connect(db) as conn:
                    lock = conn.execute("SELECT pid FROM locks").fetchall()
                    runs = conn.execute("SELECT status FROM runs").fetchall()
            except sqlite3.Error:
                lock = runs = []
            if lock and runs:
                break
            time.sleep(0.1)
        assert lock == [(first.pid,)] and runs == [("running",)]
    finally:
        first.kill()  # SIGKILL
        first.wait()
    with sqlite3.connect(db) as conn:  # left behind
        assert conn.execute("SELECT pid FROM locks").fetchall() == [(first.pid,)]
    cache = ArtifactCache(tmp_path / "hc" / "artifacts")
    spec = load_device("local-onnxruntime")
    report = profile(load_space(TINY), spec, db, cache=cache, progress=False, limit=2)
    assert report.new_entries == 2
    assert f"took over the lock pid {first.pid} left" in capsys.readouterr().err
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM locks").fetchone()[0] == 0
        statuses = [s for (s,) in conn.execute("SELECT status FROM runs ORDER BY id")]
    assert statuses == ["interrupted", "done"]
