"""What the host accepts from a device's agent.

A board on a lab network (or anything on the path to it) can answer anything, so nothing it
sends is stored before it is checked here: every line must be one JSON object, every timing a
positive finite number of milliseconds, every id one that was asked for. A reply that fails
becomes that item's error, with the reason, and the run goes on (``profilers.measure``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

# Fields of a result line the host reads, and what each must hold.
_TIMES = ("samples_ms", "round_medians_ms")
_TEXTS = ("runtime", "runtime_version", "delegate")
_ID_IN_HEAD = re.compile(r'"id"\s*:\s*"((?:[^"\\]|\\.){1,200})"')


@dataclass(frozen=True)
class BadReply:
    """A line that is not a usable reply; ``id`` is whose it seems to be, if that is known."""

    reason: str
    id: str | None = None


def parse(line: str) -> dict[str, Any] | BadReply:
    """One agent line as a JSON object, or why it is not one."""
    try:
        msg = json.loads(line)
    except ValueError as exc:  # JSONDecodeError and a bad surrogate alike
        return BadReply(f"not JSON ({getattr(exc, 'msg', exc)}): {line[:80]!r}")
    if not isinstance(msg, dict):
        return BadReply(f"a JSON {type(msg).__name__}, not an object: {line[:80]!r}")
    item = msg.get("id")
    if item is not None and not isinstance(item, str):
        return BadReply(f"an id that is not a string: {item!r:.80}")
    return msg


def id_in_head(head: str) -> str | None:
    """The item id near the start of a line too long to parse (the agent writes it second)."""
    m = _ID_IN_HEAD.search(head)
    if m is None:
        return None
    try:
        return json.loads(f'"{m.group(1)}"')
    except ValueError:
        return None


def _positive(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def result_problem(msg: dict[str, Any]) -> str | None:
    """Why a ``result`` line cannot be stored, or None when it can."""
    if not _positive(msg.get("median_ms")):
        return f"median_ms is {msg.get('median_ms')!r:.40}, not a positive finite number of ms"
    for name in _TIMES:
        values = msg.get(name)
        if name == "round_medians_ms" and values is None:
            continue  # an older agent sends no round medians; latency_of falls back
        if not isinstance(values, list) or not values:
            return f"{name} is {values!r:.40}, not a non-empty list of milliseconds"
        bad = next((v for v in values if not _positive(v)), None)
        if bad is not None:
            return f"{name} holds {bad!r:.40}, not a positive finite number of ms"
    for name in _TEXTS:
        value = msg.get(name)
        if value is not None and not isinstance(value, str):
            return f"{name} is {value!r:.40}, not a string"
    return None


def _text(value: str) -> str:
    """JSON may carry lone surrogates, which no UTF-8 database column takes."""
    return value.encode("utf-8", "replace").decode("utf-8")


def checked(msg: dict[str, Any]) -> dict[str, Any]:
    """A result or error line as the engine may store it: a result that fails its checks
    becomes an error naming the reason; an error's reason becomes a string."""
    if msg.get("type") == "result":
        problem = result_problem(msg)
        if problem is None:
            return {**msg, **{k: _text(msg[k]) for k in _TEXTS if msg.get(k) is not None}}
        return {
            "type": "error",
            "id": msg["id"],
            "error": _text(f"invalid reply from the device: {problem}"),
        }
    reason = msg.get("error")
    if not isinstance(reason, str) or not reason:
        reason = f"the agent reported an error without a reason ({reason!r:.80})"
    return {**msg, "type": "error", "error": _text(reason)}
