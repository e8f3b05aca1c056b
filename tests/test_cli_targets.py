"""`gdn-tune targets`: every target with its arch, compute capability and shared memory; an unknown name
lists the known ones."""

import json

from click.testing import CliRunner

from gdn_kernels import TARGETS
from gdn_tune.cli import main

EXPECTED_TARGETS = {
    "a100": ("sm80", "8.0"),
    "h100": ("sm90", "9.0"),
    "h200": ("sm90", "9.0"),
    "b200": ("sm100", "10.0"),
    "rtx5090": ("sm120", "12.0"),
}


def test_targets_lists_every_target_with_its_arch():
    result = CliRunner().invoke(main, ["targets"])
    assert result.exit_code == 0, result.output
    for name, (arch, cc) in EXPECTED_TARGETS.items():
        line = next(line for line in result.output.splitlines() if line.startswith(name + " "))
        assert arch in line and cc in line


def test_targets_json():
    result = CliRunner().invoke(main, ["targets", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert {n: (r["arch"], r["compute_capability"]) for n, r in rows.items()} == EXPECTED_TARGETS
    for name, row in rows.items():
        assert row["shared_memory_per_block"] == TARGETS[name].shared_memory_per_block
        assert row["sm_count"] == TARGETS[name].sm_count
        assert isinstance(row["tables_shipped"], bool)


def test_unknown_target_names_the_known_ones():
    result = CliRunner().invoke(main, ["targets", "h300"])
    assert result.exit_code != 0
    assert "unknown GPU target 'h300'" in result.output
    for name in EXPECTED_TARGETS:
        assert name in result.output
