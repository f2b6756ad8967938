"""Names that become file and folder names, and the paths built from them.

A device's, a space's or a pipeline's ``name`` names folders (``RUN/DEVICE/BUDGET``,
``RUN/bundles/DEVICE-BUDGET``, ``runs/spaces/SPACE-DEVICE-kK.toml``), so it is checked when its
file is loaded (``check_name``), and every path built from one is checked to stay inside the
folder it was built under (``child_path``): a name like ``x/../../ESCAPED`` must never make a
command write, or remove, anything outside its run folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hurricane.errors import UserError

_NAME = re.compile(r"[A-Za-z0-9._-]+")
RULE = "letters, digits, '-', '_' and '.' (no path separators, not '.' or '..')"


def name_problem(name: object) -> str | None:
    """What is wrong with ``name`` as a file or folder name, or None when it is fine."""
    if not isinstance(name, str) or not name:
        return f"expected a non-empty name, got {name!r}"
    if not _NAME.fullmatch(name) or set(name) == {"."}:
        return f"use only {RULE}; it names files and folders; got {name!r}"
    return None


def check_name(
    kind: str, name: object, source: str, error_type: type[UserError] = UserError
) -> str:
    """``name`` when it is a safe file name; else ``error_type`` naming ``source``'s ``name``
    field (``kind``: device, space, pipeline)."""
    problem = name_problem(name)
    if problem:
        raise error_type(f"{source}: name: a {kind} name must be a plain file name: {problem}")
    assert isinstance(name, str)
    return name


def child_path(parent: str | Path, *parts: str) -> Path:
    """``parent / parts...``, refused with a ``UserError`` when it would lead outside ``parent``
    (a ``..``, an absolute part). The check is on the written path, not on where symbolic
    links lead, so a run folder may hold links to other disks."""
    parent = Path(parent)
    path = parent.joinpath(*parts)
    base = os.path.normpath(os.path.abspath(parent))
    full = os.path.normpath(os.path.abspath(path))
    if full == base or os.path.commonpath([base, full]) != base:
        raise UserError(
            f"{path}: leads outside {parent}; a name that builds this path must use only {RULE}"
        )
    return path
