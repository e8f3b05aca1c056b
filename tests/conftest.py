"""Kernel tests run everywhere: on a CUDA GPU when there is one, else on the CPU through Triton's
interpreter. TRITON_INTERPRET must be set before triton decorates any kernel, hence here."""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU host)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device() -> torch.device:
    """Where kernel tests run: the GPU if present, else the CPU under TRITON_INTERPRET=1."""
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # A different seed per test id keeps inputs fresh across tests but reproducible for a failure.
    torch.manual_seed(hash(request.node.nodeid) % 2**31)
