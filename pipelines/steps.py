"""Step records for resumable pipelines.

A pipeline is a chain of steps (profile, shrink, supernet, search, final, handoff, report).
Each step is run with the inputs that decide its result — the settings it reads and the
digests of the steps it builds on — and, when it finishes, leaves a record in
``RUN/steps/NAME.json`` with those inputs and its outputs (with a digest of what it made).
Running again skips a step whose record has the same inputs; a changed input re-runs that
step, and a step whose output digest changed re-runs what depends on it, because its digest
is one of their inputs. A step that was interrupted has a ``.started`` marker and no record:
it runs again and resumes from its own checkpoints (training, search state, stored
measurements), unless its inputs changed meanwhile, in which case its work folder is cleared.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def digest(obj: Any) -> str:
    """A stable short hash of JSON-able data."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


@dataclass
class StepLog:
    """What a pipeline run did: step name -> "ran" or "skipped"."""

    actions: dict[str, str] = field(default_factory=dict)

    @property
    def ran(self) -> list[str]:
        return [k for k, v in self.actions.items() if v == "ran"]

    @property
    def skipped(self) -> list[str]:
        return [k for k, v in self.actions.items() if v == "skipped"]


class Steps:
    """Runs named steps under ``root`` (the pipeline's run folder), skipping finished ones."""

    def __init__(self, root: str | Path, echo: Callable[[str], None] = print) -> None:
        self.root = Path(root)
        self.dir = self.root / "steps"
        self.echo = echo
        self.log = StepLog()

    def record(self, name: str) -> dict[str, Any] | None:
        path = self.dir / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def run(
        self,
        name: str,
        inputs: dict[str, Any],
        fn: Callable[[], dict[str, Any]],
        workdir: Path | None = None,
        intact: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """Outputs of step ``name``: the stored ones when its inputs are unchanged (and
        ``intact(outputs)`` holds: what it made is still there), else ``fn()``'s (a dict that
        should hold a ``digest`` of what it made)."""
        key = digest(inputs)
        done = self.record(name)
        if done and done["inputs_digest"] == key:
            if intact is None or intact(done["outputs"]):
                self.log.actions[name] = "skipped"
                self.echo(f"[{name}] done earlier, skipped")
                return done["outputs"]
            self.echo(f"[{name}] its outputs were changed or removed since it ran")
        started = self.dir / f"{name}.started"
        stale = done is not None or (started.exists() and started.read_text().strip() != key)
        if stale and workdir is not None and workdir.exists():
            # Its inputs changed: what a previous attempt left there must not be resumed.
            shutil.rmtree(workdir)
        why = "inputs changed" if stale else ("resuming" if started.exists() else "new")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / f"{name}.json").unlink(missing_ok=True)
        started.write_text(key + "\n")
        self.echo(f"[{name}] running ({why})")
        t0 = time.perf_counter()
        outputs = fn()
        seconds = round(time.perf_counter() - t0, 2)
        _write_json(
            self.dir / f"{name}.json",
            {
                "step": name,
                "inputs_digest": key,
                "inputs": inputs,
                "outputs": outputs,
                "seconds": seconds,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
        started.unlink(missing_ok=True)
        self.log.actions[name] = "ran"
        self.echo(f"[{name}] finished in {seconds:.1f}s")
        return outputs
