"""`gdn-tune export` and the provenance of tables: interpreter timings never enter a table unless asked
for, entries of two GPUs never share a file's `made_with`, and `check` refuses tables whose provenance
is the interpreter's or is not recorded. Sweeps are written straight into the database (no trials run).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _helpers import INTERPRETER, KEY, MADE_WITH, OTHER_KEY, record_sweep
from click.testing import CliRunner

from gdn_kernels import kernel_specs, target_by_name
from gdn_kernels._tables import TableEntry, load_table
from gdn_tune.cli import main
from gdn_tune.export import export_tables
from gdn_tune.storage import Storage
from gdn_tune.tables import MixedProvenanceError, merge_into_table, write_table

ROOT = Path(__file__).resolve().parent.parent
GATING = kernel_specs()["gdn_gating"]


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def interpreter_db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'interpret.db'}"
    record_sweep(Storage(url), "cpu", INTERPRETER, time_ms=15.86)  # the CPU's 15.86 ms of the issue
    return url


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_an_interpreter_sweep_never_overwrites_the_shipped_tables(interpreter_db, tmp_path, monkeypatch):
    # The default --out is ./tuned_configs: in a checkout, the shipped tables.
    shutil.copytree(ROOT / "tuned_configs", tmp_path / "tuned_configs")
    monkeypatch.chdir(tmp_path)
    before = folder_bytes(tmp_path / "tuned_configs")

    refused = invoke("export", "--gpu", "h200", "--db", interpreter_db)
    assert refused.exit_code == 2, refused.output
    assert "Triton interpreter" in refused.output and "--allow-interpreter-timings" in refused.output

    # Asked for, interpreter entries still cannot join a file whose entries an H200 measured.
    mixed = invoke("export", "--gpu", "h200", "--db", interpreter_db, "--allow-interpreter-timings")
    assert mixed.exit_code == 2, mixed.output
    assert "gdn_gating.json" in mixed.output and "NVIDIA H200" in mixed.output
    assert folder_bytes(tmp_path / "tuned_configs") == before


def test_interpreter_timings_go_only_where_asked_and_check_refuses_them(interpreter_db, tmp_path):
    out = tmp_path / "tables"
    result = invoke(
        "export", "--gpu", "h200", "--db", interpreter_db, "--out", str(out), "--allow-interpreter-timings"
    )
    assert result.exit_code == 0, result.output
    made_with = json.loads((out / "sm90" / "gdn_gating.json").read_text())["made_with"]
    assert made_with["gpu"] == INTERPRETER and made_with["interpret"] is True

    check = invoke("check", "--config-dir", str(out), "--strict", "--no-compile")
    assert check.exit_code == 1 and "interpreter's CPU wall clock" in check.output, check.output
    accepted = invoke(
        "check", "--config-dir", str(out), "--strict", "--no-compile", "--allow-interpreter-timings"
    )
    assert accepted.exit_code == 0, accepted.output


def test_a_gpu_sweep_beside_an_interpreter_one_exports_alone(tmp_path):
    url = f"sqlite:///{tmp_path / 'mixed.db'}"
    storage = Storage(url)
    record_sweep(storage, "a", "NVIDIA H200", block=2048)
    record_sweep(storage, "b", INTERPRETER, block=256)  # later, same key: the GPU's winner stays
    record_sweep(storage, "c", "NVIDIA H200", kernel_hash="0123456789abcdef", block=512)  # stale
    record_sweep(storage, "d", INTERPRETER, key=OTHER_KEY)  # a key only the interpreter swept
    result = export_tables(url, target_by_name("h200"), tmp_path / "out")
    table = json.loads((tmp_path / "out" / "sm90" / "gdn_gating.json").read_text())
    assert [(e["key"]["T"], e["config"]["BLOCK"]) for e in table["entries"]] == [(128, 2048)]
    assert table["made_with"]["gpu"] == "NVIDIA H200" and table["made_with"]["interpret"] is False
    assert len(result.skipped) == 2
    assert "0123456789abcdef" in result.skipped[0]
    assert "interpreter sweep(s) 2, 4 left out" in result.skipped[1]


def test_winners_of_two_gpus_never_share_a_file(tmp_path):
    url = f"sqlite:///{tmp_path / 'two.db'}"
    storage = Storage(url)
    record_sweep(storage, "a", "NVIDIA H200", key=KEY)
    record_sweep(storage, "b", "NVIDIA H200 NVL", key=OTHER_KEY)
    out = tmp_path / "out"
    common = ["export", "--gpu", "h200", "--db", url, "--out", str(out)]
    mixed = invoke(*common)
    assert mixed.exit_code == 2 and "--per-device" in mixed.output, mixed.output
    assert not out.exists()

    per_device = invoke(*common, "--per-device")
    assert per_device.exit_code == 0, per_device.output
    for folder, T in (("NVIDIA_H200", 128), ("NVIDIA_H200_NVL", 64)):
        table = json.loads((out / "sm90" / folder / "gdn_gating.json").read_text())
        assert [e["key"]["T"] for e in table["entries"]] == [T]
        assert table["made_with"]["gpu"] == folder.replace("_", " ")

    one = invoke(*common, "--sweep", "1")
    assert one.exit_code == 0, one.output
    assert json.loads((out / "sm90" / "gdn_gating.json").read_text())["made_with"]["sweep_id"] == 1
    unknown = invoke(*common, "--sweep", "9")
    assert unknown.exit_code == 2 and "--sweep 9" in unknown.output and "1, 2" in unknown.output


def test_merging_entries_of_another_gpu_into_a_table_is_refused(tmp_path):
    path = write_table(tmp_path, "sm90", GATING, [TableEntry(KEY, GATING.default, 0.01, 0.02)], MADE_WITH)
    before = path.read_bytes()
    swept = [TableEntry(OTHER_KEY, GATING.default, 15.86, 15.9)]
    with pytest.raises(MixedProvenanceError, match="NVIDIA H200"):
        merge_into_table(tmp_path, "sm90", GATING, swept, {**MADE_WITH, "gpu": INTERPRETER, "cuda": None})
    assert path.read_bytes() == before
    # Replacing every entry leaves none of the other GPU's: that is allowed.
    merge_into_table(
        tmp_path,
        "sm90",
        GATING,
        [TableEntry(KEY, GATING.default, 0.02, 0.03)],
        {**MADE_WITH, "gpu": "NVIDIA H100"},
    )
    assert json.loads(path.read_text())["made_with"]["gpu"] == "NVIDIA H100"


def test_check_fails_on_tables_whose_provenance_is_not_recorded(tmp_path):
    root = tmp_path / "tables"
    path = write_table(root, "sm90", GATING, [TableEntry(KEY, GATING.default, 0.01, 0.02)], MADE_WITH)
    data = json.loads(path.read_text())
    assert data["made_with"]["interpret"] is False  # the writer always records it
    del data["made_with"]["interpret"]
    path.write_text(json.dumps(data))
    # The runtime reads a file without it (made on the GPU it names); check wants it recorded.
    table, problems = load_table(path, {GATING.name: GATING})
    assert table is not None and problems == []
    check = invoke("check", "--config-dir", str(root), "--strict", "--no-compile")
    assert check.exit_code == 1 and "does not record whether its times" in check.output, check.output

    # A GPU folder's table made on another GPU.
    write_table(root, "sm90", GATING, [TableEntry(KEY, GATING.default, 0.01, 0.02)], MADE_WITH, "NVIDIA H100")
    path.unlink()
    check = invoke("check", "--config-dir", str(root), "--strict", "--no-compile")
    assert check.exit_code == 1 and "folder of NVIDIA_H100" in check.output, check.output


def test_the_shipped_tables_record_gpu_provenance():
    for path in sorted((ROOT / "tuned_configs").rglob("*.json")):
        if path.name.startswith("schema"):
            continue
        made_with = json.loads(path.read_text())["made_with"]
        assert made_with["interpret"] is False and made_with["gpu"] != INTERPRETER, path
