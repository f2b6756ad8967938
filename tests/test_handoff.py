"""Bundles as data (pipelines/handoff.py): real final models, real ONNX Runtime bundles, and
``hurricane handoff verify`` through the real CLI. A bundle from someone else must never run
code, must say what it is and no more, and must fail loudly when it is not what it claims."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
from pathlib import Path

import pytest
import torch

from devices.spec import load_device
from hurricane.data import load_data
from hurricane.provenance import git_state, provenance
from hurricane.space_file import load_space
from pipelines.cli import main
from pipelines.handoff import (
    MANIFEST,
    BundleError,
    check_files,
    data_digest,
    make_bundle,
    manifest_digest,
    verify_bundle,
)

TINY = Path(__file__).resolve().parent / "spaces" / "tiny.toml"
ARCH = "mb_k3_e3-ds_k3@0.5-shuffle_k3"


class Payload:
    """Pickles into a call that creates ``marker``: what a hostile model.pt would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, single_thread):
    """(folder, device spec, accepted bundle with default manifest, NOT ACCEPTED bundle made
    with keep_local=True), each made once by the real handoff on ONNX Runtime."""
    from hurricane.final import train_final

    tmp = tmp_path_factory.mktemp("handoff")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HURRICANE_CACHE", str(tmp / "cache"))
        spec_file = tmp / "ort.toml"
        spec_file.write_text(
            'name = "ort"\nkind = "cpu"\n[runtime]\nname = "onnxruntime"\n'
            "[measure]\nwarmup = 1\nrounds = 3\nruns = 3\nmin_round_ms = 0\n"
        )
        spec = load_device(spec_file)
        fin = train_final(str(TINY), ARCH, tmp / "final", 4, seed=0, batch_size=32, progress=False)
        # What a pipeline hands over: its own path and its provenance (with the host name).
        extra = {
            "pipeline": {"name": "tiny", "source": str(tmp / "tiny.toml")},
            "provenance": provenance(),
        }
        good = tmp / "good"
        make_bundle(str(TINY), fin["model"], spec, good, 1000.0, 0.05, samples=4, extra=extra)
        tight = tmp / "tight"
        make_bundle(str(TINY), fin["model"], spec, tight, 1e-6, 0.05, samples=4, keep_local=True)
    return tmp, spec_file, good, tight


def copy_of(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / bundle.name
    shutil.copytree(bundle, dst)
    return dst


def rewrite_manifest(bundle: Path, change) -> None:
    path = bundle / MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest, indent=1) + "\n")


def restamp(bundle: Path, name: str) -> None:
    """Update the manifest's sha256 of ``name``: what someone who swapped the file does."""
    f = bundle / name
    sha = hashlib.sha256(f.read_bytes()).hexdigest()

    def change(m):
        m["files"][name] = {"sha256": sha, "bytes": f.stat().st_size}

    rewrite_manifest(bundle, change)


def one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("hurricane: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, err
    return err


def test_a_model_pt_carrying_a_pickle_payload_is_refused_and_never_run(
    bundles, tmp_path, capsys
) -> None:
    _, spec, good, _ = bundles
    bundle = copy_of(good, tmp_path)
    saved = torch.load(bundle / "model.pt", weights_only=True)
    marker = tmp_path / "ran.txt"
    torch.save({**saved, "model": Payload(marker)}, bundle / "model.pt")
    restamp(bundle, "model.pt")
    assert check_files(bundle) == []  # the checksums alone cannot tell
    # The payload is live: a full unpickle runs it.
    probe = tmp_path / "probe.pt"
    torch.save({"model": Payload(tmp_path / "probe-ran.txt")}, probe)
    torch.load(probe, weights_only=False)
    assert (tmp_path / "probe-ran.txt").exists()

    assert main(["handoff", "verify", str(bundle), "--device", str(spec)]) == 2
    one_line_error(capsys, str(bundle / "model.pt"), "(io.open)", "could run code")
    assert not marker.exists()
    with pytest.raises(BundleError):
        verify_bundle(bundle, str(spec))
    assert not marker.exists()


def test_a_supernet_or_init_file_carrying_a_payload_is_refused(tmp_path) -> None:
    from hurricane.errors import UserError
    from hurricane.two_stage import load_supernet

    marker = tmp_path / "ran.txt"
    evil = tmp_path / "supernet.pt"
    torch.save({"space": "tiny", "model": Payload(marker)}, evil)
    with pytest.raises(UserError) as err:
        load_supernet(load_space(TINY), evil)
    assert str(evil) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="junk.pt: not a readable supernet"):
        load_supernet(load_space(TINY), tmp_path / "junk.pt")


def test_a_manifest_entry_without_its_sha256_is_one_line(bundles, tmp_path, capsys) -> None:
    bundle = copy_of(bundles[2], tmp_path)
    rewrite_manifest(bundle, lambda m: m["files"]["arch.txt"].pop("sha256"))
    assert main(["handoff", "verify", str(bundle)]) == 2
    one_line_error(capsys, "arch.txt", "no sha256", MANIFEST)


def test_a_manifest_entry_outside_the_bundle_is_one_line(bundles, tmp_path, capsys) -> None:
    bundle = copy_of(bundles[2], tmp_path)
    (tmp_path / "elsewhere.txt").write_text("x\n")

    def change(m):
        m["files"]["../elsewhere.txt"] = {"sha256": "0" * 64}

    rewrite_manifest(bundle, change)
    assert main(["handoff", "verify", str(bundle)]) == 2
    one_line_error(capsys, "../elsewhere.txt", "not a file of the bundle folder")


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_an_extra_file_or_folder_in_a_bundle_is_one_line(bundles, tmp_path, capsys, kind) -> None:
    bundle = copy_of(bundles[2], tmp_path)
    if kind == "file":
        (bundle / "notes.txt").write_text("not in the manifest\n")
        name = "notes.txt"
    else:
        (bundle / "payload").mkdir()
        (bundle / "payload" / "run.py").write_text("print('hello')\n")
        name = "payload/"
    assert main(["handoff", "verify", str(bundle)]) == 2
    one_line_error(capsys, name, "not listed in its manifest.json")
    with pytest.raises(BundleError, match=name):
        check_files(bundle)


def test_a_pinned_manifest_digest_refuses_a_consistently_rewritten_bundle(
    bundles, tmp_path, capsys
) -> None:
    bundle = copy_of(bundles[2], tmp_path)
    pinned = manifest_digest(bundle)
    assert pinned == hashlib.sha256((bundle / MANIFEST).read_bytes()).hexdigest()
    assert main(["handoff", "verify", str(bundle), "--digest", pinned.upper()]) == 0
    out = capsys.readouterr().out
    assert f"manifest sha256 {pinned} (as pinned)" in out and "checksums match" in out
    # Someone swaps a file and updates the manifest to match: the checksums still pass
    # (they say the files match the manifest, not who wrote it); the pin does not.
    (bundle / "arch.txt").write_text("skip-skip-skip\n")
    restamp(bundle, "arch.txt")
    assert main(["handoff", "verify", str(bundle)]) == 0
    assert f"manifest sha256 {manifest_digest(bundle)}" in capsys.readouterr().out
    assert main(["handoff", "verify", str(bundle), "--digest", pinned]) == 2
    one_line_error(capsys, str(bundle / MANIFEST), f"not the pinned {pinned}")
    assert main(["handoff", "verify", str(bundle), "--digest", "abc"]) == 2
    one_line_error(capsys, "--digest abc", "64 hex digits")


def test_verify_exits_non_zero_on_a_not_accepted_bundle(bundles, capsys) -> None:
    _, spec, good, tight = bundles
    assert json.loads((tight / MANIFEST).read_text())["accepted"] is False
    assert main(["handoff", "verify", str(tight)]) == 3
    assert "manifest says NOT ACCEPTED" in capsys.readouterr().out
    assert main(["handoff", "verify", str(tight), "--device", str(spec)]) == 3
    assert "OVER BUDGET" in capsys.readouterr().out
    res = verify_bundle(good, str(spec))
    assert res["ok"] and res["within_budget"] and res["outputs"]["passed"]


def _strings(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_a_default_manifest_has_no_local_paths_or_host_name(bundles) -> None:
    _, _, good, _ = bundles
    manifest = json.loads((good / MANIFEST).read_text())
    strings = list(_strings(manifest))
    local = [s for s in strings if os.path.isabs(s) or s.startswith("~") or ":/" in s]
    assert local == []
    assert platform.node() not in strings  # test_keep_local_keeps_paths_and_host: it was
    prov = manifest["provenance"]
    assert "host" not in prov and prov["argv"][0] == Path(sys.argv[0]).name
    # What reproduces the result is all there.
    assert prov["hurricane"] and prov["torch"] == torch.__version__ and prov["python"]
    assert prov["git_commit"] == git_state()[0] and len(prov["git_commit"]) == 40
    assert manifest["converters"]["onnxruntime"]
    assert manifest["latency"]["protocol"]["rounds"] == 3
    assert manifest["latency"]["budget_ms"] == 1000.0
    assert manifest["verification"]["samples"] == 4
    assert manifest["space"]["structure_hash"]
    assert manifest["space"]["source"] in (os.path.relpath(TINY), TINY.name)
    assert manifest["pipeline"] == {"name": "tiny", "source": "tiny.toml"}
    data = manifest["accuracy"]["data"]
    space = load_space(TINY)
    splits = load_data("fashion-mnist", space.resolution, space.in_channels, space.classes)
    assert data["name"] == "fashion-mnist" and data["digest"] == data_digest(splits)
    assert "hostname" not in manifest["device"]["fingerprint"]
    assert manifest["device"]["fingerprint"]["cores"] >= 1


def test_keep_local_keeps_paths_and_host(bundles) -> None:
    _, spec, _, tight = bundles
    manifest = json.loads((tight / MANIFEST).read_text())
    prov = manifest["provenance"]
    assert prov["host"] == platform.node() and prov["argv"] == sys.argv
    assert manifest["space"]["source"] == str(TINY)
    assert manifest["device"]["spec"] == str(spec)
    assert os.path.isabs(manifest["accuracy"]["data"]["source"])
    assert manifest["device"]["fingerprint"]["hostname"] == platform.node()
    assert len(manifest["accuracy"]["data"]["digest"]) == 64
