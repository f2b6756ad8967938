"""Provenance: what produced a result (code version and git state, library versions, host,
command line), recorded in every ``summary.json``, run report and benchmark result so a figure
can be traced to the code and machine that made it; a bundle's manifest records it without
the host name and local paths (``keep_local=False``)."""

from __future__ import annotations

import os
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


def portable_path(text: str) -> str:
    """``text`` without what only this machine knows: an absolute (or ``~``) path becomes
    relative to the working folder when inside it, else just its name; a ``kind:PATH``
    data set (``cifar10:/data/c10``) keeps its kind. Anything else is returned as it is."""
    kind, sep, rest = text.partition(":")
    if sep and kind.isidentifier() and len(kind) > 1 and _is_local(rest):
        return f"{kind}:{portable_path(rest)}"
    if not _is_local(text):
        return text
    path = Path(text).expanduser()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return path.name


def _is_local(text: str) -> bool:
    return os.path.isabs(text) or text.startswith("~")


def portable_argv(argv: list[str]) -> list[str]:
    """The command line with the program reduced to its name and every path argument
    (``--opt=PATH`` too) made portable (``portable_path``)."""
    out = [Path(argv[0]).name] if argv else []
    for arg in argv[1:]:
        opt, eq, value = arg.partition("=")
        out.append(
            f"{opt}={portable_path(value)}" if eq and opt.startswith("-") else portable_path(arg)
        )
    return out


def provenance(keep_local: bool = True) -> dict[str, Any]:
    """What produced a run: versions, the checkout, host, command line. A run's own
    records (summaries, reports, benchmark results) keep the host name and the command line
    as typed; ``keep_local=False`` is for a file handed to someone else (a bundle's
    manifest): no host name, and the command line's paths made portable."""
    commit, dirty = git_state()
    prov = {
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
    if not keep_local:
        del prov["host"]
        prov["argv"] = portable_argv(sys.argv)
    return prov
