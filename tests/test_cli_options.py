"""The options several commands share (gdn_tune.cli.options): durations, shapes, and domain errors as click
errors."""

import click
import pytest
from click.testing import CliRunner

from gdn_tune.cli.options import domain_errors, parse_duration, parse_shape
from gdn_tune.errors import ExportRefused, StorageError, UnknownSweepError


def test_duration_and_shape_parsing():
    assert [parse_duration(t) for t in ("90", "90s", "20m", "1h30m", "1.5h")] == [90, 90, 1200, 5400, 5400]
    shape = parse_shape("H=2,HV=8,K=128,V=128,T=512,N=512,phase=decode")
    assert (shape.H, shape.HV, shape.tokens, shape.sequences, shape.phase, shape.dtype) == (
        2,
        8,
        512,
        512,
        "decode",
        "bfloat16",
    )
    with pytest.raises(ValueError, match="HV a multiple of H"):
        parse_shape("H=3,HV=8,K=128,V=128,T=64")


@pytest.mark.parametrize(
    ("error", "exit_code"),
    [
        (ValueError("bad value"), 1),
        (StorageError("no database"), 1),
        (UnknownSweepError("no sweep 7"), 2),
        (ExportRefused("mixed GPUs"), 2),
    ],
    ids=["value", "storage", "unknown-sweep", "export-refused"],
)
def test_domain_errors_are_one_line_click_errors(error, exit_code):
    @click.command()
    @domain_errors
    def command() -> None:
        raise error

    result = CliRunner().invoke(command, [])
    assert result.exit_code == exit_code and f"Error: {error}" in result.output, result.output
    assert result.exc_info is None or result.exc_info[0] is SystemExit  # no traceback


def test_a_bug_is_not_hidden_as_a_domain_error():
    @click.command()
    @domain_errors
    def command() -> None:
        raise KeyError("a bug")

    result = CliRunner().invoke(command, [])
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)
