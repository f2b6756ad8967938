"""Profiling throughput: the demo space on the local LiteRT device, from an empty database,
first with an empty artifact cache (cold), then with the cache the first run filled (warm).

    .venv/bin/python benchmarks/profiling_throughput.py [--limit N] [--device local-litert]

Writes benchmarks/results/profiling_throughput.json with entries, entries_per_min and
overhead_ratio (campaign wall time / time inside timed runs). Goal on 2 cores: >= 60 entries
per minute and overhead <= 3.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from devices.artifacts import ArtifactCache
from devices.spec import load_device
from hurricane.provenance import provenance
from hurricane.space_file import load_space
from profilers.campaign import profile

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="demo")
    ap.add_argument("--device", default="local-litert")
    ap.add_argument("--limit", type=int, default=None, help="profile only the first N entries")
    args = ap.parse_args()
    space, spec = load_space(args.space), load_device(args.device)
    phases = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        # cold: nothing converted yet; warm: a second device with the same runtime, whose
        # artifacts the first campaign left in the cache (empty database both times).
        for phase in ("cold", "warm"):
            report = profile(
                space,
                spec,
                Path(tmp) / f"{phase}.sqlite",
                cache=ArtifactCache(cache),
                limit=args.limit,
            )
            phases[phase] = report.to_json()
    r = phases["cold"]
    result = {
        "device": spec.name,
        "space": space.name,
        "entries": r["new_entries"],
        "space_entries": r["instances"],
        "limit": args.limit,
        "entries_per_min": r["entries_per_min"],
        "overhead_ratio": r["overhead_ratio"],
        "seconds": round(r["seconds"], 1),
        "convert_seconds": round(r["convert_seconds"], 1),
        "timed_seconds": round(r["timed_seconds"], 2),
        "measured": r["measured"],
        "noisy": r["noisy"],
        "errors": r["errors"],
        "remeasured": r["remeasured"],
        "warm_cache": {
            k: (round(v, 2) if isinstance(v, float) else v)
            for k, v in phases["warm"].items()
            if k
            in (
                "new_entries",
                "entries_per_min",
                "overhead_ratio",
                "seconds",
                "timed_seconds",
                "noisy",
                "errors",
            )
        },
        "measure_protocol": {
            "warmup": spec.measure.warmup,
            "rounds": spec.measure.rounds,
            "runs": spec.measure.runs,
            "min_round_ms": spec.measure.min_round_ms,
            "batch": spec.measure.batch,
        },
        "goal": "entries_per_min >= 60 and overhead_ratio <= 3",
        "provenance": provenance(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "profiling_throughput.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    warm = result["warm_cache"]
    print(
        f"{spec.name}: cold cache {result['entries']} entries in {result['seconds']}s "
        f"({result['entries_per_min']}/min; conversion {result['convert_seconds']}s), "
        f"overhead ratio {result['overhead_ratio']}; warm cache {warm['entries_per_min']}/min, "
        f"overhead ratio {warm['overhead_ratio']}; wrote {out}"
    )


if __name__ == "__main__":
    main()
