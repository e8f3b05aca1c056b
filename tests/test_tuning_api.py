"""`gdn_kernels.tuning`, the runtime's door for tools: the tuner goes through it and nothing else."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gdn_kernels.tuning as tuning
from gdn_kernels import Workload
from gdn_kernels._tables import resolve_config

TUNER = Path(__file__).resolve().parent.parent / "tuner"
# `gdn_kernels._tables`, `gdn_kernels.tuning._LAZY`: a private name; dunders (`__version__`) are public.
PRIVATE_REFERENCE = re.compile(r"\bgdn_kernels(?:\.tuning)?\._(?!_)\w*")
PUBLIC_MODULES = ("gdn_kernels", "gdn_kernels.tuning")


def private_uses(source: str) -> list[str]:
    """Every private runtime name `source` imports or mentions (code, strings, comments, docstrings)."""
    found = PRIVATE_REFERENCE.findall(source)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module in PUBLIC_MODULES:
            found += [
                f"{node.module}.{a.name}"
                for a in node.names
                if a.name.startswith("_") and not a.name.startswith("__")
            ]
    return found


@pytest.mark.parametrize(
    "source",
    [
        "from gdn_kernels._tables import load_table",
        "from gdn_kernels import _tables",
        "import gdn_kernels._launch as launch",
        "from gdn_kernels.tuning import _LAZY",
        "def f():\n    '''Reads `gdn_kernels._warm`.'''",
        "import importlib\nimportlib.import_module('gdn_kernels._spec')",
    ],
    ids=["from-private", "private-submodule", "import-private", "private-of-tuning", "docstring", "string"],
)
def test_the_scan_finds_a_private_use(source):
    assert private_uses(source)


def test_the_scan_accepts_the_public_doors():
    source = "from gdn_kernels import Config, __version__\nfrom gdn_kernels.tuning import load_table\n"
    assert private_uses(source) == []


def test_the_tuner_uses_no_private_runtime_name():
    files = sorted(p for p in TUNER.rglob("*") if p.is_file() and p.suffix in (".py", ".mako"))
    assert files
    uses = {}
    for path in files:
        source = path.read_text()
        found = private_uses(source) if path.suffix == ".py" else PRIVATE_REFERENCE.findall(source)
        if found:
            uses[str(path.relative_to(TUNER))] = found
    assert uses == {}, f"import these through gdn_kernels.tuning instead: {uses}"


@pytest.mark.parametrize("name", tuning.__all__)
def test_every_exported_name_resolves(name):
    assert getattr(tuning, name) is not None
    assert name in dir(tuning)


def test_the_export_list_names_each_once():
    assert len(set(tuning.__all__)) == len(tuning.__all__)


def test_import_gdn_kernels_tuning_stays_light():
    # The tuner's CLI imports it at start; `gdn-tune --help` must not wait for torch and triton (3 s).
    code = "import sys, gdn_kernels.tuning; print([m for m in ('torch', 'triton') if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stdout


def meta_rows() -> list:
    return [r for r in tuning.resolution_report() if torch.device(r.device).type == "meta"]


def test_resolving_as_gives_meta_tensors_a_place_and_forgets_it(monkeypatch):
    monkeypatch.delenv(tuning.ENV_ARCH, raising=False)
    spec = tuning.kernel_specs()["gdn_gating"]
    key = spec.key_for(Workload(H=16, HV=32, K=128, V=128, tokens=4096))
    place = tuning.TablePlace("sm90", "NVIDIA_H200")
    with tuning.resolving_as("meta", place):
        resolve_config(spec, key, torch.device("meta"))
        (row,) = meta_rows()  # resolved from the sm90 tables, as an H200 would
        assert row.source != "default" and "sm90" in Path(row.file).parts, row.describe()
    assert meta_rows() == []
    assert tuning.locate_tables(torch.device("meta")).arch is None  # outside the block: no GPU's place
