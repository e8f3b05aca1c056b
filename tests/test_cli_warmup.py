"""`gdn-tune warmup`'s arguments through click's runner: each bad one is an error that says what is wrong."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from gdn_tune.cli import main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "nope", "--gpu", "h200"], "unknown preset 'nope'"),
        (["--preset", "smoke", "--gpu", "h200", "--kernels", "chunk_state,nope"], "unknown kernel(s) nope"),
        (["--preset", "smoke", "--gpu", "nope"], "unknown GPU target 'nope'"),
        (["--shape", "H=1,HV=2,K=32", "--gpu", "h200"], "T"),
        (["--preset", "smoke", "--gpu", "h200", "--device-name", "../x"], "cannot name a table folder"),
        (["--preset", "smoke", "--device-name", "NVIDIA H200"], "--device-name goes with a named --gpu"),
        (["--preset", "smoke", "--gpu", "h200", "--jobs", "0"], "--jobs"),
        (["--preset", "smoke", "--gpu", "h200", "--beta-dtype", "int8"], "--beta-dtype"),
        (["--model", "nope", "--gpu", "h200"], "unknown model 'nope'; known models: qwen3-next-80b-a3b"),
        (["--model", "qwen3.5-35b-a3b", "--tp", "3", "--gpu", "h200"], "is sharded at TP 1, 2, 4, 8"),
        (["--tp", "2", "--gpu", "h200"], "--tp goes with --model"),
        (
            ["--model", "qwen3.5-35b-a3b", "--no-varlen", "--gpu", "h200"],
            "--varlen go with --preset or --shape",
        ),
    ],
    ids=[
        "preset",
        "kernel",
        "target",
        "shape",
        "device-name",
        "device-name-auto",
        "jobs",
        "beta",
        "model",
        "tp",
        "tp-alone",
        "model-with-flags",
    ],
)
def test_bad_arguments_are_clear_errors(args, message):
    result = CliRunner().invoke(main, ["warmup", *args])
    assert result.exit_code != 0
    assert message in result.output, result.output
