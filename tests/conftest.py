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


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server for the module (Debian's `postgresql` package, see _postgres.py);
    the test is skipped only where its binaries are absent (.ci/run installs them)."""
    from _postgres import PostgresCluster, postgres_bin_dir

    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries not found (Debian: apt-get install -y postgresql)")
    cluster = PostgresCluster(bin_dir)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db(request, tmp_path) -> str:
    """URL of a new, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sweep.db'}"
    return request.getfixturevalue("postgres").new_database()
