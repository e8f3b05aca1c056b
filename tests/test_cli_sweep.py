"""`gdn-tune sweep`'s arguments through click's runner: bad ones are one-line errors with the right exit
code."""

import pytest
import torch
from click.testing import CliRunner

from gdn_tune.cli import main


def _invoke(args: list[str]):
    return CliRunner().invoke(main, args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cli_refuses_a_gpu_sweep_without_a_gpu(tmp_path):
    result = _invoke(
        ["sweep", "--gpu", "h200", "--preset", "smoke", "--db", f"sqlite:///{tmp_path / 'x.db'}"]
    )
    assert result.exit_code == 1 and "no CUDA GPU found" in result.output
    assert not (tmp_path / "x.db").exists()  # refused before touching the database


@pytest.mark.parametrize(
    "args, message",
    [
        (["--strategy", "grid", "--trials", "5"], "--trials sets the TPE budget"),
        (["--kernels", "nope"], "unknown kernel(s) nope"),
        (["--budget", "soon"], "not a duration: 'soon'"),
        (["--workers", "two"], "--workers must be a positive number or auto"),
        (["--shape", "H=16,HV=32"], "missing K, V, T"),
    ],
    ids=["trials-with-grid", "unknown-kernel", "bad-budget", "bad-workers", "short-shape"],
)
def test_bad_sweep_arguments_are_clear_errors(tmp_path, args, message):
    result = _invoke(
        ["sweep", "--gpu", "h200", "--interpret", "--db", f"sqlite:///{tmp_path / 'x.db'}", *args]
    )
    assert result.exit_code == 1 and message in result.output, result.output


def test_an_unknown_preset_is_a_usage_error_naming_the_presets(tmp_path):
    result = _invoke(["sweep", "--gpu", "h200", "--interpret", "--preset", "nope"])
    assert result.exit_code == 2 and "'nope' is not one of" in result.output and "'smoke'" in result.output


def test_queue_depth_must_be_at_least_one(tmp_path):
    result = _invoke(
        [
            "sweep",
            "--gpu",
            "h200",
            "--interpret",
            "--db",
            f"sqlite:///{tmp_path / 'x.db'}",
            "--queue-depth",
            "0",
        ]
    )
    assert result.exit_code == 2 and "--queue-depth" in result.output, result.output


def test_the_busy_share_reads_per_worker_in_percent():
    from gdn_tune.cli.progress import busy_line

    assert busy_line({"gpu0": 0.934, "gpu1": 0.5}) == "gpu0 93 %, gpu1 50 %"
