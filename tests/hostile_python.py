"""A device ``python`` that runs the real agent and corrupts its replies, as a hostile board
(or anything on the path to it) could. For tests/test_replies.py.

    hostile_python.py MODE LOG SEED REAL_PYTHON AGENT_ARGS...

MODE is one of CORRUPTIONS, ``valid`` (pass everything through) or ``fuzz`` (a seeded choice
per result line). Every corrupted result line appends its mode to LOG. Standard library only:
this runs where the agent runs.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Callable

Corrupt = Callable[[dict], list[str]]


def _set(field: str, value: object) -> Corrupt:
    return lambda m: [json.dumps({**m, field: value})]


def _without(field: str) -> Corrupt:
    return lambda m: [json.dumps({k: v for k, v in m.items() if k != field})]


CORRUPTIONS: dict[str, Corrupt] = {
    "negative": _set("median_ms", -5.0),
    "nan": _set("median_ms", float("nan")),
    "inf": _set("median_ms", float("inf")),
    "string": _set("median_ms", "fast"),
    "null": _set("median_ms", None),
    "zero": _set("median_ms", 0),
    "bool": _set("median_ms", True),
    "no_median": _without("median_ms"),
    "empty_samples": _set("samples_ms", []),
    "no_samples": _without("samples_ms"),
    "string_samples": _set("samples_ms", ["1.0"]),
    "nan_sample": lambda m: [json.dumps({**m, "samples_ms": [*m["samples_ms"][1:], float("nan")]})],
    "negative_round": _set("round_medians_ms", [-1.0, 2.0]),
    "dict_rounds": _set("round_medians_ms", {"a": 1}),
    "runtime_list": _set("runtime", ["litert"]),
    "not_json": lambda m: ["{'type': 'result', oops"],
    "truncated": lambda m: [json.dumps(m)[:40]],
    "list": lambda m: [json.dumps([m])],
    "number": lambda m: ["42"],
    "empty_line": lambda m: [""],
    "bad_utf8_escape": lambda m: ['{"type": "result", "id": "\\ud800"}'],
    "unknown_id": _set("id", "nobody-asked-for-this"),
    "int_id": _set("id", 7),
    "twice": lambda m: [json.dumps(m)] * 2,
    "dropped": lambda m: [],
    "huge": lambda m: [json.dumps({**m, "pad": "x" * 100_000})],
    "error_dict": lambda m: [json.dumps({"type": "error", "id": m["id"], "error": {"x": 1}})],
    "unknown_type": lambda m: [json.dumps({**m, "type": "surprise"})],
    "surrogate_error": lambda m: [json.dumps({"type": "error", "id": m["id"], "error": "\udcff"})],
    "surrogate_runtime": _set("runtime", "lite\udcffrt"),
}


def main() -> int:
    mode, log, seed, python, *args = sys.argv[1:]
    rng = random.Random(int(seed))
    choices = [*CORRUPTIONS, "valid", "valid", "valid"]
    child = subprocess.Popen([python, *args], stdout=subprocess.PIPE)  # stdin is inherited
    assert child.stdout is not None
    for raw in child.stdout:
        line = raw.decode("utf-8", "replace").rstrip("\n")
        try:
            msg = json.loads(line)
        except ValueError:
            msg = None
        out = [line]
        if isinstance(msg, dict) and msg.get("type") == "result":
            how = rng.choice(choices) if mode == "fuzz" else mode
            if how != "valid":
                out = CORRUPTIONS[how](msg)
                with open(log, "a") as f:
                    f.write(f"{how}\n")
        for o in out:
            sys.stdout.write(o + "\n")
        sys.stdout.flush()
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())
