"""Names that become folder names, and paths built from them (hurricane.names)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hurricane.budgets import Budget
from hurricane.errors import UserError
from hurricane.names import check_name, child_path
from pipelines.config import Pipeline

ESCAPE = "x/../../../../../ESCAPED"


@pytest.mark.parametrize("name", ["local-litert", "demo", "fbnet.v2_small", "A1"])
def test_plain_names_pass(name: str) -> None:
    assert check_name("device", name, "d.toml") == name


@pytest.mark.parametrize(
    "name", [ESCAPE, "..", ".", "", "a/b", "a\\b", "/etc", "two words", "tab\t", 3]
)
def test_names_that_are_not_plain_file_names_are_refused(name: object) -> None:
    with pytest.raises(UserError) as err:
        check_name("device", name, "d.toml")
    msg = str(err.value)
    assert msg.startswith("d.toml: name: a device name must be a plain file name"), msg
    assert "\n" not in msg and repr(name) in msg


def test_child_path_stays_inside(tmp_path: Path) -> None:
    assert child_path(tmp_path, "bundles", "ort-1ms") == tmp_path / "bundles" / "ort-1ms"
    assert child_path("runs/spaces", "demo-ort-k4.toml") == Path("runs/spaces/demo-ort-k4.toml")


@pytest.mark.parametrize("parts", [("bundles", ESCAPE), ("..",), ("/etc",), ("a/../..",), (".",)])
def test_child_path_refuses_a_part_that_leaves(tmp_path: Path, parts: tuple[str, ...]) -> None:
    """Out of the folder, or the folder itself (what would be replaced is the whole run)."""
    with pytest.raises(UserError, match="leads outside") as err:
        child_path(tmp_path / "run", *parts)
    assert "\n" not in str(err.value)


def test_the_bundle_path_a_handoff_replaces_never_leaves_the_run(tmp_path: Path) -> None:
    """The handoff replaces ``RUN/bundles/DEVICE-BUDGET`` (rmtree, then rename) once the new
    bundle is made: a device name that climbs out must be refused before anything runs, and
    the folder it points at left alone. The spec is built in code, past the loader's check."""
    from dataclasses import replace

    from devices.spec import load_device
    from pipelines.jobs import PipelineRun

    outside = tmp_path / "ESCAPED-1ms"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the run's\n")
    p = Pipeline(
        name="t",
        space="demo",
        devices=("local-onnxruntime",),
        budgets=(Budget(ms=1.0),),
        out=str(tmp_path / "a" / "b" / "run"),
    )
    run = PipelineRun(p, progress=False)
    spec = replace(load_device("local-onnxruntime"), name=ESCAPE)
    with pytest.raises(UserError, match="leads outside"):
        run._handoff(spec, "demo", {"model": "m.pt"}, 1.0, "1ms")
    assert (outside / "keep.txt").read_text() == "not the run's\n"
    assert not (tmp_path / "a").exists()  # nothing was made either
