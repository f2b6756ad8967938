"""The latency lookup table: one SQLite file (WAL) with devices, measured entries and runs.

Every entry is committed as soon as it is measured, so an interrupted profiling run loses
nothing, and ``(device, key)`` is the primary key, so running again never duplicates one.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hurricane.lutkeys import OpInstance, PairInstance, key_columns

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id INTEGER PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,
    kind TEXT NOT NULL,
    runtime TEXT NOT NULL,
    spec TEXT NOT NULL,
    fingerprint TEXT,
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    device_id INTEGER NOT NULL REFERENCES devices(id),
    space TEXT NOT NULL,
    started TEXT NOT NULL,
    finished TEXT,
    status TEXT NOT NULL,
    info TEXT
);
CREATE TABLE IF NOT EXISTS entries (
    device_id INTEGER NOT NULL REFERENCES devices(id),
    key TEXT NOT NULL,
    op TEXT NOT NULL,
    cin INTEGER NOT NULL,
    cout INTEGER NOT NULL,
    h INTEGER NOT NULL,
    w INTEGER NOT NULL,
    stride INTEGER NOT NULL,
    act TEXT NOT NULL,
    runtime TEXT,
    precision TEXT,
    delegate TEXT,
    median_ms REAL,
    mean_ms REAL,
    std_ms REAL,
    min_ms REAL,
    n INTEGER,
    samples TEXT,
    status TEXT NOT NULL,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 1,
    run_id INTEGER REFERENCES runs(id),
    measured_at TEXT NOT NULL,
    passes TEXT,
    PRIMARY KEY (device_id, key)
);
-- Whole networks measured end to end (calibration, validation, the whole-model predictor).
-- space_hash names the space's structure, so a changed space file never reuses old timings.
CREATE TABLE IF NOT EXISTS models (
    device_id INTEGER NOT NULL REFERENCES devices(id),
    space TEXT NOT NULL,
    space_hash TEXT NOT NULL,
    arch TEXT NOT NULL,
    median_ms REAL,
    round_cv REAL,
    samples TEXT,
    status TEXT NOT NULL,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 1,
    runtime TEXT,
    delegate TEXT,
    measured_at TEXT NOT NULL,
    passes TEXT,
    PRIMARY KEY (device_id, space_hash, arch)
);
-- One row per latency validation: its figures and where its plot went.
CREATE TABLE IF NOT EXISTS validations (
    id INTEGER PRIMARY KEY,
    device_id INTEGER NOT NULL REFERENCES devices(id),
    space TEXT NOT NULL,
    created TEXT NOT NULL,
    result TEXT NOT NULL
);
"""

# Columns added since the first release; a file made before them gains them when opened.
ADDED_COLUMNS = {"entries": {"passes": "TEXT"}, "models": {"passes": "TEXT"}}

# ok: measured and steady; noisy: still above the CV threshold after every re-measurement
# (kept, flagged); error: failed to convert or to run (kept with its error).
STATUSES = ("ok", "noisy", "error")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _row_id(cur: sqlite3.Cursor) -> int:
    """The id of the row an INSERT just added (sqlite3 types lastrowid as optional)."""
    if cur.lastrowid is None:
        raise sqlite3.DatabaseError("INSERT returned no row id")
    return cur.lastrowid


@dataclass(frozen=True)
class Entry:
    key: str
    op: str
    cin: int
    cout: int
    h: int
    w: int
    stride: int
    act: str
    status: str
    median_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    min_ms: float | None = None
    n: int | None = None
    samples: tuple[float, ...] = ()
    error: str | None = None
    runtime: str | None = None
    precision: str | None = None
    delegate: str | None = None
    attempts: int = 1
    passes: tuple[float, ...] = ()  # the statistic of each pass; median_ms is their median

    @property
    def cv(self) -> float | None:
        if not self.mean_ms or self.std_ms is None:
            return None
        return self.std_ms / self.mean_ms

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def entry_from_samples(
    inst: OpInstance | PairInstance, samples: list[float], status: str = "ok", **kw
) -> Entry:
    """An entry whose statistics are computed from raw samples (ms)."""
    return Entry(
        **key_columns(inst),
        status=status,
        median_ms=kw.pop("median_ms", None) or statistics.median(samples),
        mean_ms=statistics.fmean(samples),
        std_ms=statistics.pstdev(samples),
        min_ms=min(samples),
        n=len(samples),
        samples=tuple(samples),
        **kw,
    )


def error_entry(inst: OpInstance | PairInstance, error: str, **kw) -> Entry:
    return Entry(
        **key_columns(inst),
        status="error",
        error=error.strip().splitlines()[0][:500] if error.strip() else "unknown error",
        **kw,
    )


class LutDB:
    """A LUT database file. Safe to open from several processes (WAL, busy timeout)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.executescript(SCHEMA)
        for table, cols in ADDED_COLUMNS.items():
            have = {r["name"] for r in self.conn.execute(f"PRAGMA table_info({table})")}
            for col, kind in cols.items():
                if col not in have:
                    self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {col} {kind}")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> LutDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- devices and runs ---------------------------------------------------------------
    def upsert_device(
        self, name: str, kind: str, runtime: str, spec: dict, fingerprint: dict | None = None
    ) -> int:
        with self.conn:
            self.conn.execute(
                "INSERT INTO devices (name, kind, runtime, spec, fingerprint, updated) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET kind=excluded.kind, "
                "runtime=excluded.runtime, spec=excluded.spec, "
                "fingerprint=COALESCE(excluded.fingerprint, devices.fingerprint), "
                "updated=excluded.updated",
                (
                    name,
                    kind,
                    runtime,
                    json.dumps(spec, sort_keys=True),
                    json.dumps(fingerprint, sort_keys=True) if fingerprint else None,
                    _now(),
                ),
            )
        return self.device_id(name)

    def device_id(self, name: str) -> int:
        row = self.conn.execute("SELECT id FROM devices WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise KeyError(name)
        return row["id"]

    def devices(self) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT * FROM devices ORDER BY name").fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["spec"] = json.loads(d["spec"])
            d["fingerprint"] = json.loads(d["fingerprint"]) if d["fingerprint"] else None
            out.append(d)
        return out

    def start_run(self, device_id: int, space: str, info: dict | None = None) -> int:
        with self.conn:
            cur = self.conn.execute(
                "INSERT INTO runs (device_id, space, started, status, info) VALUES (?, ?, ?, ?, ?)",
                (device_id, space, _now(), "running", json.dumps(info or {})),
            )
        return _row_id(cur)

    def finish_run(self, run_id: int, status: str, info: dict | None = None) -> None:
        with self.conn:
            self.conn.execute(
                "UPDATE runs SET finished = ?, status = ?, info = COALESCE(?, info) WHERE id = ?",
                (_now(), status, json.dumps(info) if info is not None else None, run_id),
            )

    # --- entries ------------------------------------------------------------------------
    def put(self, device_id: int, entry: Entry, run_id: int | None = None) -> None:
        """Insert or replace one entry, committed at once."""
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO entries (device_id, key, op, cin, cout, h, w, stride, "
                "act, runtime, precision, delegate, median_ms, mean_ms, std_ms, min_ms, n, "
                "samples, status, error, attempts, run_id, measured_at, passes) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    device_id,
                    entry.key,
                    entry.op,
                    entry.cin,
                    entry.cout,
                    entry.h,
                    entry.w,
                    entry.stride,
                    entry.act,
                    entry.runtime,
                    entry.precision,
                    entry.delegate,
                    entry.median_ms,
                    entry.mean_ms,
                    entry.std_ms,
                    entry.min_ms,
                    entry.n,
                    json.dumps(list(entry.samples)),
                    entry.status,
                    entry.error,
                    entry.attempts,
                    run_id,
                    _now(),
                    json.dumps(list(entry.passes)) if entry.passes else None,
                ),
            )

    def entries(self, device_id: int, statuses: Iterable[str] | None = None) -> list[Entry]:
        rows = self.conn.execute(
            "SELECT * FROM entries WHERE device_id = ? ORDER BY key", (device_id,)
        ).fetchall()
        wanted = set(statuses) if statuses is not None else None
        return [self._entry(r) for r in rows if wanted is None or r["status"] in wanted]

    def get(self, device_id: int, key: str) -> Entry | None:
        row = self.conn.execute(
            "SELECT * FROM entries WHERE device_id = ? AND key = ?", (device_id, key)
        ).fetchone()
        return self._entry(row) if row else None

    def done_keys(self, device_id: int) -> set[str]:
        """Keys that need no more work (measured, flagged noisy, or failed with an error)."""
        rows = self.conn.execute("SELECT key FROM entries WHERE device_id = ?", (device_id,))
        return {r["key"] for r in rows}

    def count(self, device_id: int) -> dict[str, int]:
        rows = self.conn.execute(
            "SELECT status, COUNT(*) AS n FROM entries WHERE device_id = ? GROUP BY status",
            (device_id,),
        ).fetchall()
        return {r["status"]: r["n"] for r in rows}

    # --- whole models and validations ---------------------------------------------------
    def run_infos(self, device_id: int) -> list[dict[str, Any]]:
        """The ``info`` of every run on this device that recorded one, oldest first."""
        rows = self.conn.execute(
            "SELECT info FROM runs WHERE device_id = ? AND info IS NOT NULL ORDER BY id",
            (device_id,),
        )
        return [json.loads(r["info"]) for r in rows]

    def put_model(
        self, device_id: int, space: str, space_hash: str, arch: str, result: dict[str, Any]
    ) -> None:
        """Store one end-to-end measurement (``result``: median_ms, round_cv, samples_ms,
        status, error, attempts, runtime, delegate, passes), committed at once."""
        passes = result.get("passes")
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO models (device_id, space, space_hash, arch, median_ms, "
                "round_cv, samples, status, error, attempts, runtime, delegate, measured_at, "
                "passes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    device_id,
                    space,
                    space_hash,
                    arch,
                    result.get("median_ms"),
                    result.get("round_cv"),
                    json.dumps(result.get("samples_ms") or []),
                    result["status"],
                    result.get("error"),
                    result.get("attempts", 1),
                    result.get("runtime"),
                    result.get("delegate"),
                    _now(),
                    json.dumps(list(passes)) if passes else None,
                ),
            )

    def model(self, device_id: int, space_hash: str, arch: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT * FROM models WHERE device_id = ? AND space_hash = ? AND arch = ?",
            (device_id, space_hash, arch),
        ).fetchone()
        return None if row is None else self._model(row)

    def models(self, device_id: int, space_hash: str) -> dict[str, dict[str, Any]]:
        """arch string -> its stored measurement, for one device and space."""
        rows = self.conn.execute(
            "SELECT * FROM models WHERE device_id = ? AND space_hash = ?", (device_id, space_hash)
        ).fetchall()
        return {r["arch"]: self._model(r) for r in rows}

    @staticmethod
    def _model(r: sqlite3.Row) -> dict[str, Any]:
        return {
            **dict(r),
            "samples": json.loads(r["samples"] or "[]"),
            "passes": json.loads(r["passes"] or "[]"),
        }

    def add_validation(self, device_id: int, space: str, result: dict[str, Any]) -> int:
        with self.conn:
            cur = self.conn.execute(
                "INSERT INTO validations (device_id, space, created, result) VALUES (?, ?, ?, ?)",
                (device_id, space, _now(), json.dumps(result)),
            )
        return _row_id(cur)

    def validations(self, device_id: int | None = None) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT * FROM validations WHERE ? IS NULL OR device_id = ? ORDER BY id",
            (device_id, device_id),
        ).fetchall()
        return [{**dict(r), "result": json.loads(r["result"])} for r in rows]

    @staticmethod
    def _entry(r: sqlite3.Row) -> Entry:
        return Entry(
            key=r["key"],
            op=r["op"],
            cin=r["cin"],
            cout=r["cout"],
            h=r["h"],
            w=r["w"],
            stride=r["stride"],
            act=r["act"],
            status=r["status"],
            median_ms=r["median_ms"],
            mean_ms=r["mean_ms"],
            std_ms=r["std_ms"],
            min_ms=r["min_ms"],
            n=r["n"],
            samples=tuple(json.loads(r["samples"] or "[]")),
            error=r["error"],
            runtime=r["runtime"],
            precision=r["precision"],
            delegate=r["delegate"],
            attempts=r["attempts"],
            passes=tuple(json.loads(r["passes"] or "[]")),
        )
