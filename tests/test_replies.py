"""A hostile device: replies that are not what the protocol says never reach the database.

The device is a real sshd on loopback whose ``python`` runs the real agent through
tests/hostile_python.py, which corrupts its result lines."""

from __future__ import annotations

import json
import math
import sqlite3
import sys
from pathlib import Path

import pytest

import devices.transport
from devices.artifacts import ArtifactCache
from devices.spec import load_device
from hurricane.calibration import Calibration
from hurricane.errors import UserError
from hurricane.space_file import load_space
from profilers.campaign import profile, space_instances
from profilers.replies import BadReply, checked, id_in_head, parse, result_problem
from tests.hostile_python import CORRUPTIONS
from tests.sshd import SSHServer

TINY = Path(__file__).parent / "spaces" / "tiny.toml"
HOSTILE = Path(__file__).parent / "hostile_python.py"
MEASURE = "[measure]\nwarmup = 1\nrounds = 3\nruns = 2\nmin_round_ms = 0\nbatch = 8\n"


@pytest.fixture(scope="module")
def server():
    with SSHServer() as s:
        yield s


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> ArtifactCache:
    return ArtifactCache(tmp_path_factory.mktemp("artifacts"))


def hostile_spec(tmp_path: Path, server: SSHServer, mode: str, seed: int = 0, extra: str = ""):
    """A device spec whose python corrupts the agent's replies by ``mode``; and the log of
    corrupted replies."""
    log = tmp_path / f"corrupted-{mode}-{seed}.log"
    log.touch()
    wrapper = tmp_path / f"python-{mode}-{seed}"
    wrapper.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" "{HOSTILE}" {mode} "{log}" {seed} '
        f'"{sys.executable}" "$@"\n'
    )
    wrapper.chmod(0o755)
    path = tmp_path / f"hostile-{mode}-{seed}.toml"
    path.write_text(
        f'name = "hostile"\nkind = "mobile-cpu"\npython = "{wrapper}"\n'
        f'[transport]\ntype = "ssh"\nhost = "{server.host}"\nport = {server.port}\n'
        f'user = "{server.user}"\nkey_file = "{server.client_key}"\n'
        f'known_hosts = "{server.known_hosts}"\nconnect_timeout_s = 5\n'
        f'[runtime]\nname = "onnxruntime"\n{MEASURE}{extra}'
    )
    return load_device(path), log


def entries(db: Path) -> list[dict]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM entries")]


def assert_only_valid_rows_and_errors(db: Path) -> list[dict]:
    rows = entries(db)
    for r in rows:
        if r["status"] == "error":
            assert r["error"] and r["median_ms"] is None, r
            continue
        assert r["status"] in ("ok", "noisy"), r
        samples = json.loads(r["samples"])
        assert samples and all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in samples)
        for col in ("median_ms", "mean_ms", "min_ms"):
            assert math.isfinite(r[col]) and r[col] > 0, (col, r)
    return rows


# --- the checks themselves ----------------------------------------------------------------


def test_every_malformed_line_gets_a_reason() -> None:
    good = {"type": "result", "id": "a", "median_ms": 0.5, "samples_ms": [0.5, 0.6]}
    assert parse(json.dumps(good)) == good and result_problem(good) is None
    for line in ("", "42", "[1]", '"x"', "{'a': 1}", '{"id": 3}', "not json"):
        bad = parse(line)
        assert isinstance(bad, BadReply) and bad.reason, line
    for mode, corrupt in CORRUPTIONS.items():
        for out in corrupt(dict(good)):
            msg = parse(out)
            if isinstance(msg, BadReply) or msg.get("id") != "a" or msg.get("type") != "result":
                continue  # refused at parse time, or not a result for a pending id
            if mode in ("twice", "surrogate_runtime", "huge"):  # huge: refused by the reader
                assert result_problem(msg) is None
                continue
            assert result_problem(msg), mode
            assert checked(msg)["type"] == "error", mode


def test_a_refused_long_line_still_names_its_item() -> None:
    head = json.dumps({"type": "result", "id": 'op/k"3', "pad": "x" * 50})[:60]
    assert id_in_head(head) == 'op/k"3'
    assert id_in_head('{"type": "result", "pad": "xxxx') is None


def test_calibration_refuses_non_finite_or_non_positive_data() -> None:
    Calibration.fit([1.0, 2.0, 3.0], [1.1, 2.1, 3.2])  # fine
    for measured in ([1.0, -5.0, 2.0], [1.0, float("nan"), 2.0], [1.0, math.inf, 2.0]):
        with pytest.raises(UserError, match="model 2") as err:
            Calibration.fit([1.0, 2.0, 3.0], measured)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="predicted"):
        Calibration.fit([1.0, 0.0, 3.0], [1.0, 2.0, 3.0])


# --- a hostile device over real SSH -------------------------------------------------------


@pytest.mark.parametrize("mode", ["negative", "nan", "unknown_id", "huge", "not_json"])
def test_a_bad_reply_is_that_items_error_and_the_run_goes_on(
    tmp_path: Path, server, cache, mode, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(devices.transport, "MAX_LINE", 64 * 1024)  # "huge" sends 100 kB
    spec, log = hostile_spec(tmp_path, server, mode)
    db = tmp_path / "lut.sqlite"
    report = profile(load_space(TINY), spec, db, cache=cache, progress=False, limit=10)
    rows = assert_only_valid_rows_and_errors(db)
    assert len(rows) == 10 and {r["status"] for r in rows} == {"error"}
    assert report.errors == 10 and report.measured == 0
    reasons = {r["error"] for r in rows}
    expected = {
        "negative": "median_ms is -5.0",
        "nan": "median_ms is nan",
        "unknown_id": "sent no reply",
        "huge": "over the limit",
        "not_json": "sent no reply",
    }[mode]
    assert all(expected in e for e in reasons), reasons
    if mode in ("unknown_id", "not_json"):  # lines that name no item are reported, once a batch
        assert "could not be used" in capsys.readouterr().err
    assert len(log.read_text().split()) >= 10


def test_fuzz_hundreds_of_malformed_replies_leave_only_valid_rows_and_errors(
    tmp_path: Path, server, cache, monkeypatch
) -> None:
    monkeypatch.setattr(devices.transport, "MAX_LINE", 64 * 1024)
    space = load_space(TINY)
    n = len(space_instances(space))
    corrupted: list[str] = []
    ok = 0
    for seed in range(7):
        spec, log = hostile_spec(tmp_path, server, "fuzz", seed)
        db = tmp_path / f"lut-{seed}.sqlite"
        profile(space, spec, db, cache=cache, progress=False)
        rows = assert_only_valid_rows_and_errors(db)
        assert len(rows) == len({r["key"] for r in rows}) == n  # every item, once
        ok += sum(r["status"] != "error" for r in rows)
        corrupted += log.read_text().split()
    assert len(corrupted) >= 300, len(corrupted)
    assert set(corrupted) == set(CORRUPTIONS)  # every kind was sent
    assert ok > 0  # the valid replies among them were kept


def test_a_hostile_hello_is_one_line(tmp_path: Path, server, cache) -> None:
    # A python that is not Hurricane's agent: it answers the hello with something else.
    fake = tmp_path / "python-fake"
    fake.write_text('#!/bin/sh\nread line\necho \'{"type": "hello", "fingerprint": [1]}\'\n')
    fake.chmod(0o755)
    spec, _ = hostile_spec(tmp_path, server, "valid")
    spec = type(spec)(**{**spec.__dict__, "python": str(fake)})
    with pytest.raises(UserError, match="no fingerprint") as err:
        profile(load_space(TINY), spec, tmp_path / "lut.sqlite", cache=cache, progress=False)
    assert "\n" not in str(err.value)
