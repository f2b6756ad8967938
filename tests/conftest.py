"""Shared test setup."""

import sys
from pathlib import Path

import pytest

# Make the repository root importable however pytest is started.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="module")
def single_thread():
    """Run torch on one thread: the tensors in these tests are tiny, and intra-op threads
    that spin while another process holds the cores make them 100x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ort_lut(tmp_path_factory):
    """The tiny space profiled once on ONNX Runtime (a real agent, a real SQLite file):
    (database, device spec file, artifact cache). Tests that change it work on a copy."""
    from devices.artifacts import ArtifactCache
    from devices.spec import load_device
    from hurricane.space_file import load_space
    from profilers.campaign import profile

    tmp = tmp_path_factory.mktemp("ort_lut")
    spec = tmp / "ort.toml"
    spec.write_text(
        'name = "ort"\nkind = "cpu"\n[runtime]\nname = "onnxruntime"\n'
        "[measure]\nwarmup = 1\nrounds = 3\nruns = 3\nmin_round_ms = 0\n"
    )
    cache = ArtifactCache(tmp / "c")
    db = tmp / "lut.sqlite"
    tiny = Path(__file__).parent / "spaces" / "tiny.toml"
    profile(load_space(tiny), load_device(spec), db, cache=cache, progress=False)
    return db, spec, cache
