"""The latency lookup table: one SQLite file (WAL) with devices, measured entries and runs.

Every entry is committed as soon as it is measured, so an interrupted profiling run loses
nothing, and ``(device, key)`` is the primary key, so running again never duplicates one.

A file that is not a LUT (not SQLite, another program's database, a folder) or that cannot
be written (a read-only file or folder) is refused with one line naming it, before anything
is written to it; readers (``readonly=True``) still read a database they cannot write.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hurricane.errors import UserError
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
-- Analytical accelerator figures (devices/accelerator.py): zigzag-dse's cycles and energy of
-- one LUT key on one accelerator design, at one mapping-search bound; rows of another zigzag
-- or model version are evaluated again and replaced.
CREATE TABLE IF NOT EXISTS accel_entries (
    design TEXT NOT NULL,
    key TEXT NOT NULL,
    lpf_limit INTEGER NOT NULL,
    cycles REAL NOT NULL,
    ideal_cycles REAL,
    latency_ms REAL NOT NULL,
    energy_mj REAL NOT NULL,
    info TEXT,
    zigzag_version TEXT NOT NULL,
    model_version INTEGER NOT NULL,
    evaluated_at TEXT NOT NULL,
    PRIMARY KEY (design, key, lpf_limit)
);
-- The campaign profiling a device now, if any (LutDB.device_lock): one per device.
CREATE TABLE IF NOT EXISTS locks (
    device TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    proc TEXT,
    started TEXT NOT NULL,
    what TEXT
);
"""
TABLES = ("devices", "runs", "entries", "models", "validations")  # a LUT has these

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


def _writable(path: Path) -> bool:
    """Whether this process may write ``path`` (a folder: create files in it)."""
    mode = os.W_OK | (os.X_OK if path.is_dir() else 0)
    return os.access(path, mode, effective_ids=os.access in os.supports_effective_ids)


def _proc(pid: int) -> tuple[str, str] | None:
    """(state, identity) of a process of this host, from /proc: the identity (boot id and
    start time) tells it from a later process given the same pid. None where /proc does not
    say (no such process, or not Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    rest = stat[stat.rindex(")") + 2 :].split()  # from field 3 (state); 22 is the start time
    return rest[0], f"{boot}:{rest[19]}"


def _alive(pid: int, host: str, proc: str | None) -> bool:
    """Whether a lock's holder still runs. A holder on another host counts as running: it
    cannot be asked, and a WAL database is only shared by the processes of one host."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    now = _proc(pid)
    if now is None:
        return True
    state, ident = now
    return state not in ("Z", "X") and (proc is None or ident == proc)  # not reaped; not reused


class DeviceBusy(UserError):
    """Another campaign, still running, holds the device's lock on this database."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class LutDB:
    """A LUT database file. Safe to open from several processes (WAL, busy timeout).

    ``readonly``: the caller only reads (lookups, ``lut show``); such a LutDB also opens a
    database whose file or folder it cannot write, which WAL mode cannot open for writing.
    """

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(
                f"{self.path}: a folder, not a LUT database file; give a file path, e.g. "
                f"--db {self.path / 'lut.sqlite'}"
            )
        if not readonly:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError(
                    f"{self.path}: cannot create its folder {self.path.parent} "
                    f"({exc.strerror}); give a --db in a folder you can write"
                ) from None
        if self.path.is_file() and self.path.stat().st_size:
            try:
                with open(self.path, "rb") as f:
                    head = f.read(16)
            except OSError as exc:
                raise self._refusal(exc.strerror or str(exc)) from None
            if head != b"SQLite format 3\x00":
                raise self._refusal("file is not a database")
        if not readonly and self.path.exists() and not self._can_write():
            # SQLite would open it, and fail at the first write, mid-campaign.
            raise self._refusal("not writable")
        try:
            self.conn = self._open()
        except sqlite3.DatabaseError as exc:
            if not (readonly and self.path.is_file() and not self._can_write()):
                raise self._refusal(str(exc)) from None
            try:
                self.conn = self._open_readonly()
            except sqlite3.DatabaseError:
                raise self._refusal(str(exc)) from None

    def _connect(self, target: str | Path, uri: bool = False) -> sqlite3.Connection:
        conn = sqlite3.connect(target, timeout=30.0, isolation_level=None, uri=uri)
        conn.row_factory = sqlite3.Row
        return conn

    def _check_tables(self, conn: sqlite3.Connection) -> set[str]:
        """The file's tables; refuses another program's database (reading only, so a file
        that is not ours is left as it was)."""
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if names and not names & set(TABLES):
            raise UserError(
                f"{self.path}: an SQLite database, but not a Hurricane LUT (its tables: "
                f"{', '.join(sorted(names)[:5])}); give another --db"
            )
        return names

    def _open(self) -> sqlite3.Connection:
        conn = self._connect(self.path)
        try:
            self._check_tables(conn)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.executescript(SCHEMA)
            for table, cols in ADDED_COLUMNS.items():
                have = {r["name"] for r in conn.execute(f"PRAGMA table_info({table})")}
                for col, kind in cols.items():
                    if col not in have:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {col} {kind}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_readonly(self) -> sqlite3.Connection:
        """The database opened for reading where this process cannot write its file or
        folder: read-only mode, or, where WAL mode cannot even read that way (it needs the
        -shm file), as immutable, which is sound only while no write-ahead log holds
        anything the file lacks, so a non-empty -wal file is refused."""
        uri = self.path.resolve().as_uri()
        conn = self._connect(f"{uri}?mode=ro", uri=True)
        try:
            names = self._check_tables(conn)
        except sqlite3.DatabaseError:
            conn.close()
            wal = self.path.with_name(self.path.name + "-wal")
            if wal.exists() and wal.stat().st_size:
                raise
            conn = self._connect(f"{uri}?immutable=1", uri=True)
            try:
                names = self._check_tables(conn)
            except BaseException:
                conn.close()
                raise
        if "entries" not in names:
            conn.close()
            raise UserError(f"{self.path}: holds no LUT yet; run 'hurricane profile' first")
        return conn

    def _can_write(self) -> bool:
        return _writable(self.path) and _writable(self.path.parent.resolve())

    def _refusal(self, why: str) -> UserError:
        """One line for a database file that cannot be opened: which, why, what to do."""
        p = self.path
        if not p.parent.is_dir():
            return UserError(f"{p}: no such folder {p.parent}; give the LUT database's path")
        if "not a database" in why or "malformed" in why:
            return UserError(
                f"{p}: not a LUT database ({why}); give the file 'hurricane profile' wrote, "
                "or a new path (this file was left as it is)"
            )
        if p.exists() and not _writable(p):
            return UserError(
                f"{p}: the database is read-only; make it writable (chmod u+w {p}) or give "
                "a writable copy as --db"
            )
        if not _writable(p.parent.resolve()):
            return UserError(
                f"{p}: its folder {p.parent} is read-only, and SQLite must create "
                f"{p.name}-wal and {p.name}-shm beside the database; make the folder "
                "writable or copy the database to one that is"
            )
        return UserError(f"{p}: cannot open the LUT database ({why})")

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

    @contextmanager
    def device_lock(
        self,
        device: str,
        what: str = "",
        wait: bool = False,
        poll_s: float = 1.0,
        on_wait: Callable[[dict[str, Any]], None] | None = None,
    ) -> Iterator[dict[str, Any] | None]:
        """Hold ``device``'s campaign lock on this database while the block runs: two
        campaigns on one device would measure the same entries, the last writer winning, and
        each would disturb the other's timings. Held by another running process, it refuses
        (``DeviceBusy``, naming the pid) or, with ``wait``, waits for it. Yields the lock a
        holder that no longer runs left (killed, say), taken over, or None.

        The lock is a row of the ``locks`` table (pid, host, the process's start time,
        started), written in an IMMEDIATE transaction, so two takers cannot both win. Not
        SQLite's own locks on a side connection: those are the whole file's, one writer at a
        time, so holding one through a campaign would stop the campaign's own commits and
        every other device's; and a row can say who holds it. A holder that died without
        releasing (SIGKILL, a power cut) leaves its row; the next taker sees its pid gone (or
        reused by another process: the start time differs) and takes it over. Taking the lock
        also marks ``interrupted`` this device's runs still ``running``: only the lock's
        holder runs one, so those were left by a process that is gone."""
        me, host = os.getpid(), socket.gethostname()
        ident = _proc(me)
        told = False
        while True:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                # Another process holds the file's write lock past the busy timeout (paused
                # mid-commit, say): the lock row still says who is profiling, for a reader.
                if "locked" not in str(exc):
                    raise
                found = self.conn.execute("SELECT * FROM locks WHERE device = ?", (device,))
                holder = dict(got) if (got := found.fetchone()) else None
                if holder is None or not _alive(holder["pid"], holder["host"], holder["proc"]):
                    raise UserError(
                        f"{self.path}: another process has held the database's write lock "
                        "for over 30 s; wait for it or stop it, then run again"
                    ) from None
                if not wait:
                    raise DeviceBusy(self._busy(device, holder), holder["pid"]) from None
                if on_wait is not None and not told:
                    on_wait(holder)
                    told = True
                time.sleep(poll_s)
                continue
            try:
                row = self.conn.execute("SELECT * FROM locks WHERE device = ?", (device,))
                found = row.fetchone()
                holder = dict(found) if found else None
                free = holder is None or not _alive(holder["pid"], holder["host"], holder["proc"])
                if free:
                    self.conn.execute(
                        "INSERT OR REPLACE INTO locks (device, pid, host, proc, started, what) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (device, me, host, ident[1] if ident else None, _now(), what),
                    )
                    self.conn.execute(
                        "UPDATE runs SET status = 'interrupted' WHERE status = 'running' AND "
                        "device_id IN (SELECT id FROM devices WHERE name = ?)",
                        (device,),
                    )
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
            if free:
                break
            assert holder is not None
            if not wait:
                raise DeviceBusy(self._busy(device, holder), holder["pid"])
            if on_wait is not None and not told:
                on_wait(holder)
                told = True
            time.sleep(poll_s)
        try:
            yield holder
        finally:
            self.conn.execute(
                "DELETE FROM locks WHERE device = ? AND pid = ? AND host = ?", (device, me, host)
            )

    def _busy(self, device: str, h: dict[str, Any]) -> str:
        here = h["host"] == socket.gethostname()
        return (
            f"{self.path}: device {device!r} is being profiled by pid {h['pid']}"
            f"{'' if here else ' on ' + h['host']} (since {h['started']}"
            f"{', ' + h['what'] if h['what'] else ''}); two campaigns on one device disturb "
            "each other's timings: wait for it (hurricane profile --wait) or stop it"
            + (
                ""
                if here
                else f"; if it no longer runs there: sqlite3 {self.path} "
                f"\"DELETE FROM locks WHERE device = '{device}'\""
            )
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
            "passes": json.loads(r["passes"] or "[]") if "passes" in r.keys() else [],
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

    # --- analytical accelerator figures ----------------------------------------------------
    ACCEL_FIGURES = ("cycles", "ideal_cycles", "latency_ms", "energy_mj")

    def accel_get(
        self, design: str, key: str, lpf_limit: int, zigzag_version: str, model_version: int
    ) -> dict[str, Any] | None:
        """The cached figures of ``key`` on ``design``, or None (none, or another version's)."""
        try:
            r = self.conn.execute(
                "SELECT * FROM accel_entries WHERE design = ? AND key = ? AND lpf_limit = ? "
                "AND zigzag_version = ? AND model_version = ?",
                (design, key, lpf_limit, zigzag_version, model_version),
            ).fetchone()
        except sqlite3.OperationalError:  # an older file opened read-only: no such table yet
            return None
        if r is None:
            return None
        return {**{f: r[f] for f in self.ACCEL_FIGURES}, **json.loads(r["info"] or "{}")}

    def accel_put(
        self,
        design: str,
        key: str,
        lpf_limit: int,
        zigzag_version: str,
        model_version: int,
        figures: dict[str, Any],
    ) -> None:
        """Store one evaluation, committed at once; other figures go to ``info`` as JSON."""
        info = {k: v for k, v in figures.items() if k not in self.ACCEL_FIGURES}
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO accel_entries (design, key, lpf_limit, cycles, "
                "ideal_cycles, latency_ms, energy_mj, info, zigzag_version, model_version, "
                "evaluated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    design,
                    key,
                    lpf_limit,
                    *(figures.get(f) for f in self.ACCEL_FIGURES),
                    json.dumps(info),
                    zigzag_version,
                    model_version,
                    _now(),
                ),
            )

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
            passes=tuple(json.loads(r["passes"] or "[]") if "passes" in r.keys() else ()),
        )
