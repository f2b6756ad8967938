"""Provenance: what produced a result (code version and git state, library versions, host,
command line), recorded in every ``summary.json``, run report and benchmark result so a figure
can be traced to the code and machine that made it."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import hurricane


def git_state(where: Path | None = None) -> tuple[str | None, bool | None]:
    """(HEAD commit, whether tracked files differ from it) of the checkout at ``where``
    (default: this package's); (None, None) outside git. A result made from uncommitted
    code then says so instead of naming a commit that did not produce it."""
    cwd = where or Path(__file__).resolve().parent

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5)

    try:
        head = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None, None
    if head.returncode or not head.stdout.strip():
        return None, None
    return head.stdout.strip(), bool(status.stdout.strip())


def provenance() -> dict[str, Any]:
    """What produced a run: versions, host, command line."""
    commit, dirty = git_state()
    return {
        "hurricane": hurricane.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "machine": platform.machine(),
        "argv": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
