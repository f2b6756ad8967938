"""CLI commands for devices and latency tables: ``devices check``, ``profile``, ``lut``."""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from hurricane.errors import UserError
from pipelines.argtypes import nonnegative_int, positive_int
from pipelines.config import DEFAULT_DB


def _devices_check(args: argparse.Namespace) -> int:
    from devices.artifacts import ArtifactCache
    from devices.spec import load_device
    from hurricane.ops import build_op
    from profilers.session import AgentSession

    spec = load_device(args.spec)
    rt = spec.runtime
    where = "this machine" if spec.is_local else f"{spec.transport.host} over SSH"
    print(f"device {spec.name} ({spec.kind}) on {where}; runtime {rt.name} {rt.precision}")
    ok = True
    with AgentSession(spec) as session:
        fp = session.fingerprint
        print(f"  connected; agent on Python {fp.get('agent_python')}")
        print(
            f"  cpu: {fp.get('cpu_model')} ({fp.get('cores')} cores); governors: "
            f"{', '.join(fp.get('governors') or []) or 'not readable'}"
        )
        runtimes = fp.get("runtimes") or {}
        print(f"  runtimes: {', '.join(f'{k} {v}' for k, v in runtimes.items()) or 'none'}")
        module = build_op("mb_k3_e3", 8, 8, 1).eval()
        import torch

        try:
            art = ArtifactCache().get(module, torch.randn(1, 8, 16, 16), rt.name, rt.precision)
            print(f"  conversion to {art.path.suffix}: ok")
            for res in session.measure([("check", art)]):
                if res["type"] == "error":
                    ok = False
                    print(f"  tiny model: FAILED: {res['error']}")
                else:
                    print(
                        f"  tiny model: {res['median_ms']:.3f} ms median, delegate "
                        f"{res.get('delegate')}"
                    )
        except Exception as exc:  # a check reports every failure instead of stopping
            ok = False
            print(f"  FAILED: {exc}")
    print("all checks passed" if ok else "some checks failed")
    return 0 if ok else 1


def _profile_one(space_ref: str, spec_ref: str, db: str, kw: dict) -> dict:
    """One device's campaign, in its own process (spawned: torch tracing is not
    thread-safe, and JAX, which the LiteRT converter loads, does not survive a fork)."""
    from devices.spec import load_device
    from hurricane.space_file import load_space
    from profilers.campaign import profile

    return profile(load_space(space_ref), load_device(spec_ref), db, **kw).to_json()


def _profile(args: argparse.Namespace) -> int:
    from devices.spec import load_device
    from hurricane.space_file import load_space

    load_space(args.space)  # fail on a bad file before starting anything
    specs = [load_device(d) for d in args.device]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise UserError(f"two device specs share the name {names[0]!r}; names key the LUT")
    t0 = time.perf_counter()
    kws = [
        {
            "progress": not args.no_progress,
            "retry_errors": args.retry_errors,
            "remeasure_noisy": args.remeasure_noisy,
            "limit": args.limit,
            "position": i,
            "wait": args.wait,
        }
        for i in range(len(specs))
    ]
    if len(specs) == 1:
        reports = [_profile_one(args.space, args.device[0], args.db, kws[0])]
    else:  # a lab of boards: one process per device, each with its own connection
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=len(specs), mp_context=ctx) as pool:
            futures = [
                pool.submit(_profile_one, args.space, d, args.db, kw)
                for d, kw in zip(args.device, kws)
            ]
            reports = [f.result() for f in futures]
    for r in reports:
        print(
            f"{r['device']}: {r['instances']} entries in the space, {r['already_done']} already "
            f"stored, {r['measured']} measured, {r['noisy']} noisy (flagged), {r['errors']} "
            f"errors, {r['remeasured']} re-measurements; {r['seconds']:.1f}s"
            + (f" ({r['entries_per_min']} entries/min)" if r["entries_per_min"] else "")
            + (
                f"; {r['repeated']} timed again in passes 2-{r['passes']} (one pass alone off "
                f"by {100 * r['pass_spread']:.1f}% median)"
                if r.get("repeated")
                else ""
            )
        )
    print(f"LUT: {args.db} ({time.perf_counter() - t0:.1f}s)")
    return 0


def _lut_rows(db_path: str, device: str | None) -> list[dict]:
    from hurricane.lut import LutDB
    from hurricane.tomlcheck import ConfigError

    if not Path(db_path).exists():
        raise ConfigError(f"{db_path}: no LUT database here; run 'hurricane profile' first")
    out = []
    with LutDB(db_path, readonly=True) as db:
        devices = db.devices()
        if device and device not in {d["name"] for d in devices}:
            raise ConfigError(
                f"{db_path}: no device {device!r} (devices: "
                f"{', '.join(d['name'] for d in devices) or 'none'})"
            )
        for d in devices:
            if device and d["name"] != device:
                continue
            for e in db.entries(d["id"]):
                row = {"device": d["name"], **e.to_json()}
                row["cv"] = e.cv
                out.append(row)
    return out


def _lut_show(args: argparse.Namespace) -> int:
    from hurricane.lut import LutDB

    rows = _lut_rows(args.db, args.device)
    with LutDB(args.db, readonly=True) as db:
        for d in db.devices():
            if args.device and d["name"] != args.device:
                continue
            counts = db.count(d["id"])
            fp = d["fingerprint"] or {}
            print(
                f"{d['name']} ({d['kind']}, {d['runtime']}): "
                f"{', '.join(f'{n} {s}' for s, n in sorted(counts.items())) or 'no entries'}; "
                f"cpu {fp.get('cpu_model', '?')}"
            )
    shown = rows[: args.limit] if args.limit else rows
    if shown:
        print(f"{'device':<16} {'key':<44} {'median_ms':>10} {'cv':>6} {'n':>4}  status")
        for r in shown:
            med = f"{r['median_ms']:.4f}" if r["median_ms"] is not None else "-"
            cv = f"{r['cv']:.3f}" if r["cv"] is not None else "-"
            print(
                f"{r['device']:<16} {r['key']:<44} {med:>10} {cv:>6} {r['n'] or 0:>4}  "
                f"{r['status']}{': ' + r['error'] if r['error'] else ''}"
            )
        if len(rows) > len(shown):
            print(f"... {len(rows) - len(shown)} more (--limit 0 shows all)")
    return 0


def _lut_export(args: argparse.Namespace) -> int:
    rows = _lut_rows(args.db, args.device)
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        if args.format == "json":
            json.dump(rows, out, indent=1)
            out.write("\n")
        else:
            fields = [k for k in rows[0] if k != "samples"] + ["samples"] if rows else ["key"]
            writer = csv.DictWriter(out, fieldnames=fields)
            writer.writeheader()
            for r in rows:
                writer.writerow({**r, "samples": " ".join(f"{s:.5f}" for s in r["samples"])})
    finally:
        if args.out:
            out.close()
    if args.out:
        print(f"wrote {len(rows)} entries to {args.out}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    devices = sub.add_parser("devices", help="device specs: check a device works")
    dsub = devices.add_subparsers(dest="devices_command", required=True)
    check = dsub.add_parser("check", help="connect, fingerprint, run a tiny model, report")
    check.add_argument("spec", help="device spec TOML file or example name (e.g. local-litert)")
    check.set_defaults(func=_devices_check)

    prof = sub.add_parser("profile", help="measure a space's operators on devices into the LUT")
    prof.add_argument("--space", required=True, help="built-in space name or TOML file")
    prof.add_argument(
        "--device",
        required=True,
        action="append",
        help="device spec (repeat for several devices, profiled concurrently)",
    )
    prof.add_argument("--db", default=DEFAULT_DB, help="LUT database (default: %(default)s)")
    prof.add_argument(
        "--limit", type=positive_int, default=None, help="measure at most N new entries"
    )
    prof.add_argument("--retry-errors", action="store_true", help="measure failed entries again")
    prof.add_argument(
        "--remeasure-noisy",
        action="store_true",
        help="measure entries flagged noisy again (say, once the device is idle)",
    )
    prof.add_argument(
        "--wait",
        action="store_true",
        help="if another campaign is profiling the device on this database, wait for it to "
        "finish, then measure what it left (default: refuse, naming its pid)",
    )
    prof.add_argument("--no-progress", action="store_true")
    prof.set_defaults(func=_profile)

    lut = sub.add_parser("lut", help="inspect and export latency tables")
    lsub = lut.add_subparsers(dest="lut_command", required=True)
    show = lsub.add_parser("show", help="per-device counts and entries")
    show.add_argument("--db", default=DEFAULT_DB)
    show.add_argument("--device", default=None)
    show.add_argument("--limit", type=nonnegative_int, default=20, help="entries to list (0: all)")
    show.set_defaults(func=_lut_show)
    export = lsub.add_parser("export", help="entries as CSV or JSON")
    export.add_argument("--db", default=DEFAULT_DB)
    export.add_argument("--device", default=None)
    export.add_argument("--format", choices=("csv", "json"), default="csv")
    export.add_argument("--out", default=None, help="file (default: standard output)")
    export.set_defaults(func=_lut_export)
