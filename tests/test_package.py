"""The package as a user installs it: wheel contents, a light runtime import, the `gdn-tune` command."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from gdn_tune.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (found,) = out.glob("gdn_tune-*.whl")
    return found


def test_wheel_holds_exactly_the_two_packages_and_the_tables(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"gdn_kernels", "gdn_tune"}
    shipped = {
        "gdn_kernels/tuned_configs/" + p.relative_to(ROOT / "tuned_configs").as_posix()
        for p in (ROOT / "tuned_configs").rglob("*.json")
    }
    assert shipped, "tuned_configs/ holds no JSON at all"
    assert shipped <= set(names), sorted(shipped - set(names))
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "gdn-tune = gdn_tune.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_import_gdn_kernels_stays_light():
    code = (
        "import sys, gdn_kernels; "
        "print([m for m in ('optuna', 'sqlalchemy', 'click', 'pyarrow', 'gdn_tune') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stdout


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["targets"], ["sweep", "--help"]], ids=" ".join)
def test_the_command_starts_without_importing_torch(args):
    # torch, triton and SQLAlchemy take about 3 s to import; a command that needs none of them must not wait.
    code = (
        "import sys\n"
        "from gdn_tune.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
        "print([m for m in ('torch', 'triton', 'sqlalchemy', 'optuna', 'pyarrow') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout


def test_the_public_names_import_on_first_use():
    # l2norm is both a submodule and a function: importing the submodule must not hide the function.
    code = (
        "import gdn_kernels.chunk, gdn_kernels.l2norm\n"
        "from gdn_kernels import l2norm, chunk_gated_delta_rule, fused_recurrent_gated_delta_rule\n"
        "import gdn_kernels\n"
        "print(callable(l2norm), l2norm is gdn_kernels.l2norm, chunk_gated_delta_rule.__module__)"
    )
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert result.stdout.split() == ["True", "True", "gdn_kernels.chunk"], result.stdout


def test_no_autotune_in_the_runtime_package():
    offenders = [p for p in (ROOT / "kernels").rglob("*.py") if "autotune" in p.read_text()]
    assert offenders == []


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0, result.output
    assert "gdn-tune, version" in result.output


def test_the_gpu_worker_imports_no_database():
    # A worker process per GPU: it hands back trial results, only the sweep's process writes the database.
    code = "import sys, gdn_tune.worker; print([m for m in ('sqlalchemy', 'alembic') if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stdout
