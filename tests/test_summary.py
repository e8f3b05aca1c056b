"""`gdn-tune summary`: the page kept beside the tables, from a tiny interpreter sweep of a kernel that
fails in every way (tests/_fake_kernels.py) plus the gating kernel."""

from __future__ import annotations

import json
from pathlib import Path

import _fake_kernels as fake
import pytest
from click.testing import CliRunner

from gdn_tune.cli import main
from gdn_tune.storage import Storage
from gdn_tune.summary import failure_kind, sweep_summary

FAKE_SPECS = "_fake_kernels:SPECS"


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def sweep_db(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('summary') / 'sweep.db'}"
    common = ["sweep", "--gpu", "h200", "--interpret", "--preset", "smoke", "--db", url]
    faults = invoke(*common, "--kernels", "fake_faults", "--extra-specs", FAKE_SPECS, "--trial-timeout", "5")
    assert faults.exit_code == 0, faults.output
    gating = invoke(*common, "--kernels", "gdn_gating", "--strategy", "tpe", "--trials", "3")
    assert gating.exit_code == 0, gating.output
    return url


def test_summary_counts_trials_and_failures_by_kind_per_kernel(sweep_db, tmp_path):
    out = tmp_path / "sm90" / "SWEEP.md"
    result = invoke("summary", "--db", sweep_db, "--gpu", "h200", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    expected = {status: 0 for status in ("ok", "infeasible", "wrong", "crashed", "timeout")}
    for status in fake.EXPECTED_STATUS.values():
        expected[status] += 1
    faults = data["kernels"]["fake_faults"]
    assert faults["trials"] == expected
    assert faults["problems"] == 1 and faults["with_winner"] == 1
    gating = data["kernels"]["gdn_gating"]
    assert gating["trials"]["ok"] == sum(gating["trials"].values()) >= 3
    assert gating["problems"] == gating["with_winner"] == 2  # the smoke prefill and decode keys
    assert gating["compile_s"] > 0 and gating["timed_s"] > 0

    kinds = {(f["status"], f["trials"]) for f in data["failures"] if f["kernel"] == "fake_faults"}
    assert {status for status, _ in kinds} == {s for s in expected if s != "ok" and expected[s]}
    assert all(f["kernel"] == "fake_faults" for f in data["failures"])

    page = out.read_text()
    assert "| fake_faults | 1 | 1 | " in page and "| gdn_gating | 2 | 2 | " in page
    assert "## Failures by kind" in page and "SIGABRT" in page
    assert "timeout" in page


def test_summary_is_byte_identical_from_the_same_database(sweep_db, tmp_path):
    first, second = tmp_path / "a.md", tmp_path / "b.md"
    for out in (first, second):
        result = invoke("summary", "--db", sweep_db, "--out", str(out))
        assert result.exit_code == 0, result.output
        assert f"wrote {out}" in result.output
    assert first.read_bytes() == second.read_bytes()


def test_summary_of_another_target_is_empty_and_a_missing_database_is_an_error(sweep_db, tmp_path):
    assert sweep_summary(Storage(sweep_db), "b200")["kernels"] == {}
    result = invoke("summary", "--db", f"sqlite:///{tmp_path / 'none.db'}", "--out", str(tmp_path / "x.md"))
    assert result.exit_code != 0 and "no database there" in result.output
    assert not Path(tmp_path / "x.md").exists()


def test_failure_kinds_group_errors_that_differ_only_in_numbers():
    a = failure_kind("infeasible", "needs 262144 bytes of shared memory, the target has 232448\ntrace")
    b = failure_kind("infeasible", "needs 198656 bytes of shared memory, the target has 232448")
    assert a == b == "needs N bytes of shared memory, the target has N"
    # A number inside a name stays: it says which target.
    assert failure_kind("infeasible", "needs 1 bytes, h200 has 2") == "needs N bytes, h200 has N"
    assert failure_kind("crashed", None) == "(no error text)"


def test_failure_kind_of_a_traceback_kept_by_its_tail_is_its_exception_line():
    tail = (
        "...cent call last):\n"
        '  File "/x/worker.py", line 112, in _run_trial\n'
        "    measurement = measure(spec, key, config)\n"
        "                  ^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
        '  File "/x/triton/compiler/compiler.py", line 482, in _init_handles\n'
        '    raise OutOfResources(self.metadata.shared, max_shared, "shared memory")\n'
        "triton.runtime.errors.OutOfResources: out of resource: shared memory, Required: 246540, "
        "Hardware limit: 232448. Reducing block sizes or `num_stages` may help.\n"
    )
    assert failure_kind("infeasible", tail) == (
        "OutOfResources: out of resource: shared memory, Required: N, Hardware limit: N. Reducing b"
    )
