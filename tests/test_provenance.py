"""Provenance (hurricane.provenance): what a result records about the code and machine."""

from __future__ import annotations

import platform
import subprocess
import sys

import hurricane
from hurricane.provenance import git_state, provenance


def test_git_state_names_the_commit_and_says_when_the_tree_differs(tmp_path) -> None:
    assert git_state(tmp_path) == (None, None)  # not a checkout

    def run(*a):
        return subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)

    run("init", "-q")
    (tmp_path / "f.txt").write_text("one\n")
    run("add", "f.txt")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    commit, dirty = git_state(tmp_path)
    assert len(commit) == 40 and dirty is False
    (tmp_path / "new.txt").write_text("untracked files do not count\n")
    assert git_state(tmp_path) == (commit, False)
    (tmp_path / "f.txt").write_text("two\n")
    assert git_state(tmp_path) == (commit, True)


def test_provenance_names_the_versions_the_checkout_and_the_command() -> None:
    prov = provenance()
    assert prov["hurricane"] == hurricane.__version__
    assert prov["python"] == platform.python_version()
    assert prov["argv"] == sys.argv
    commit, dirty = git_state()
    assert (prov["git_commit"], prov["git_dirty"]) == (commit, dirty)
    # The suite runs from a checkout (CI clones it): the commit is named.
    assert commit is not None and len(commit) == 40 and isinstance(dirty, bool)
