"""`gdn-tune check / show / diff` through click's CliRunner, on tables written to tmp folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _helpers import MADE_WITH
from click.testing import CliRunner

from gdn_kernels._spec import Config
from gdn_kernels._tables import TableEntry
from gdn_kernels.gating import SPEC as GATING
from gdn_tune.cli import main
from gdn_tune.tables import write_table


def gating_entry(T: int, block: int, warps: int, time_ms: float = 0.01, HV: int = 2) -> TableEntry:
    key = GATING.key(dtype="bfloat16", HV=HV, T=T)
    return TableEntry(key, Config.of(BLOCK=block, num_warps=warps, num_stages=1), time_ms, 0.02)


@pytest.fixture
def tables(tmp_path) -> Path:
    root = tmp_path / "tables"
    write_table(root, "sm90", GATING, [gating_entry(128, 512, 2), gating_entry(64, 256, 1)], MADE_WITH)
    return root


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_check_compiles_and_passes(tables):
    result = invoke("check", "--config-dir", str(tables), "--arch", "sm90", "--strict")
    assert result.exit_code == 0, result.output
    assert "sm90/gdn_gating: 2 entries, 2 compiled" in result.output
    assert result.output.rstrip().endswith("ok")


def test_check_reports_preset_coverage(tables):
    # The smoke preset asks gdn_gating for HV=2 at T=128 and T=64: both are in the table.
    result = invoke("check", "--config-dir", str(tables), "--preset", "smoke", "--no-compile", "--json")
    assert result.exit_code == 0, result.output
    coverage = {c["kernel"]: (c["covered"], c["wanted"]) for c in json.loads(result.output)["coverage"]}
    assert coverage["gdn_gating"] == (2, 2)


def test_check_strict_fails_on_a_stale_table(tmp_path):
    root = tmp_path / "tables"
    write_table(root, "sm90", GATING, [gating_entry(64, 256, 1)], {**MADE_WITH, "kernel_hash": "00ff"})
    relaxed = invoke("check", "--config-dir", str(root), "--no-compile")
    assert relaxed.exit_code == 0, relaxed.output
    strict = invoke("check", "--config-dir", str(root), "--no-compile", "--strict")
    assert strict.exit_code == 1, strict.output
    assert "stale: made for kernel hash 00ff" in strict.output
    assert "sm90/gdn_gating: 1 entries, 0 compiled: stale" in strict.output


def test_check_strict_fails_on_a_bad_entry(tables):
    path = tables / "sm90" / "gdn_gating.json"
    data = json.loads(path.read_text())
    data["entries"][1]["config"]["num_warps"] = 3
    path.write_text(json.dumps(data))
    result = invoke("check", "--config-dir", str(tables), "--no-compile", "--strict")
    assert result.exit_code == 1, result.output
    assert f"{path}, entry 1, field 'config.num_warps'" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("check", "--preset", "nope"), "'nope' is not one of 'default'"),
        (("show", "--kernel", "nope"), "unknown kernel 'nope'"),
        (("diff", "/nonexistent/a", "/nonexistent/b"), "does not exist"),
    ],
    ids=["unknown-preset", "unknown-kernel", "missing-folder"],
)
def test_domain_errors_are_clear(tables, args, message):
    result = invoke(*args, *(["--config-dir", str(tables)] if args[0] != "diff" else []))
    assert result.exit_code != 0
    assert message in result.output, result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--config-dir", "/nonexistent/tables"), "table folder /nonexistent/tables does not exist"),
        (("--arch", "sm80"), "no tables for sm80 (arch folders with tables there: sm90)"),
        (("--kernel", "chunk_state"), "no tables for chunk_state"),
    ],
    ids=["missing-folder", "arch-without-tables", "kernel-without-a-table"],
)
def test_show_with_nothing_to_show_is_an_error(tables, args, message):
    config_dir = () if "--config-dir" in args else ("--config-dir", str(tables))
    result = invoke("show", *config_dir, *args)
    assert result.exit_code == 1, result.output
    assert message in result.output and "speedup" not in result.output  # no header for nothing


def test_show_prints_entries_with_speedup(tables):
    result = invoke("show", "--config-dir", str(tables), "--arch", "sm90", "--kernel", "gdn_gating")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "speedup" in lines[0]
    (t128,) = [line for line in lines if "T=128" in line]
    assert "BLOCK=512" in t128 and "num_warps=2" in t128 and "0.0100" in t128 and "2.00x" in t128


def test_show_json(tables):
    result = invoke("show", "--config-dir", str(tables), "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["entries"]
    assert [(r["key"]["T"], r["config"]["BLOCK"], r["speedup"]) for r in rows] == [
        (64, 256, 2.0),
        (128, 512, 2.0),
    ]


def test_diff_lists_changes_and_counts(tables, tmp_path):
    after = tmp_path / "after"
    write_table(
        after,
        "sm90",
        GATING,
        [gating_entry(128, 1024, 4, time_ms=0.005), gating_entry(256, 512, 2)],
        MADE_WITH,
    )
    result = invoke("diff", str(tables), str(after))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(
        line.startswith("changed  sm90/gdn_gating") and "T=128" in line and "2.00x -> 4.00x" in line
        for line in lines
    ), result.output
    assert any(line.startswith("added    sm90/gdn_gating") and "T=256" in line for line in lines)
    assert any(line.startswith("removed  sm90/gdn_gating") and "T=64" in line for line in lines)
    assert lines[-1].startswith("1 added, 1 removed, 1 changed, 0 retimed")
    as_json = json.loads(invoke("diff", str(tables), str(after), "--json").output)
    assert sorted(r["change"] for r in as_json["rows"]) == ["added", "changed", "removed"]
