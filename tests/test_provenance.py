"""Provenance (hurricane.provenance): what a result records about the code and machine."""

from __future__ import annotations

import platform
import subprocess
import sys

import hurricane
from hurricane.provenance import git_state, portable_argv, portable_path, provenance


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


def test_portable_paths_keep_what_is_relative_and_drop_what_is_local(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert portable_path(str(tmp_path / "runs" / "a.toml")) == "runs/a.toml"
    assert portable_path("/home/someone/data/fmnist") == "fmnist"
    assert portable_path("~/specs/pixel7.toml") == "pixel7.toml"
    assert portable_path("cifar10:/srv/data/c10") == "cifar10:c10"
    for kept in ("demo", "fashion-mnist", "runs/x/final.json", "40%", "0.08"):
        assert portable_path(kept) == kept
    argv = ["/opt/venv/bin/hurricane", "handoff", "/srv/run/p95", "--data=/srv/d", "--seed", "1"]
    assert portable_argv(argv) == ["hurricane", "handoff", "p95", "--data=d", "--seed", "1"]


def test_provenance_for_a_file_handed_over_has_no_host_or_local_paths(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["/opt/venv/bin/hurricane", "handoff", "/srv/runs/p95"])
    shared = provenance(keep_local=False)
    assert "host" not in shared and shared["argv"] == ["hurricane", "handoff", "p95"]
    kept = provenance()  # a run's own records and the benchmarks keep both
    assert kept["host"] == platform.node() and kept["argv"] == sys.argv
    for key in ("hurricane", "git_commit", "git_dirty", "torch", "python", "machine"):
        assert shared[key] == kept[key]
