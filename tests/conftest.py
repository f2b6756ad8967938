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
