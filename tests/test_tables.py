"""Static config tables: format, validation of every bad-input case, lookup order, writing, check/show/diff.

Tables live in tmp folders; the shipped folder is replaced by an empty one so the lead's real tables
never leak into these results. Kernel runs go through the `device` fixture (interpreter on the CPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from _helpers import MADE_WITH
from _rowsum import ROWSUM, rowsum_key

from gdn_kernels import Workload, _tables, kernel_specs
from gdn_kernels._spec import (
    Config,
    relative_error,
)
from gdn_kernels._tables import (
    TableEntry,
    TableError,
    TableWarning,
    device_folder_name,
    load_table,
    resolution_report,
    resolve_config,
)
from gdn_kernels._targets import arch_for_capability
from gdn_kernels.gating import SPEC as GATING
from gdn_kernels.gating import fused_gdn_gating, gating_reference
from gdn_tune.tables import (
    check_tables,
    diff_tables,
    merge_into_table,
    show_tables,
    table_text,
    write_table,
)

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")


def gating_key(T: int, HV: int = 8):
    return GATING.key(dtype="bfloat16", HV=HV, T=T)


def entry(key, time_ms=0.010, default_time_ms=0.020, **params) -> TableEntry:
    return TableEntry(key, Config.of(num_stages=1, **params), time_ms, default_time_ms)


# --------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(autouse=True)
def clean_tables(monkeypatch, tmp_path_factory):
    """No table environment, an empty shipped folder, and nothing cached, before and after each test."""
    for name in (_tables.ENV_ARCH, _tables.ENV_CONFIG_DIR, _tables.ENV_STRICT):
        monkeypatch.delenv(name, raising=False)
    shipped = tmp_path_factory.mktemp("shipped")
    monkeypatch.setattr(_tables, "shipped_tables_dir", lambda: shipped)
    _tables.reset()
    yield shipped
    _tables.reset()


@pytest.fixture
def tables(tmp_path, monkeypatch) -> Path:
    """A GDN_TUNE_CONFIG_DIR on sm90, for CPU tensors too."""
    root = tmp_path / "tables"
    root.mkdir()
    monkeypatch.setenv(_tables.ENV_CONFIG_DIR, str(root))
    monkeypatch.setenv(_tables.ENV_ARCH, "sm90")
    return root


def table_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, TableWarning)]


def resolve_quietly(spec, key, device=CPU):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        config = resolve_config(spec, key, device)
    return config, table_warnings(record)


def report_for(key) -> _tables.Resolution:
    (row,) = [r for r in resolution_report() if r.key == key]
    return row


# --------------------------------------------------------------------------------------------------
# Every bad-input case of the issue: skipped with one warning (default) or an error (strict)

# The gating table of these tests, written in key order: entry 0 (T=64) is the one each case breaks.
GOOD_ENTRIES = [
    entry(gating_key(128), BLOCK=512, num_warps=2),
    entry(gating_key(64), BLOCK=256, num_warps=1),
    entry(gating_key(4096), BLOCK=2048, num_warps=8),
]


def gating_table_json() -> dict:
    return json.loads(table_text("sm90", GATING, GOOD_ENTRIES, MADE_WITH))


def entry_64(data: dict) -> dict:
    (found,) = [e for e in data["entries"] if e["key"]["T"] == 64]
    return found


def break_entry(change):
    def mutate(data):
        change(entry_64(data))
        return data

    return mutate


def set_top(field, value):
    def mutate(data):
        data[field] = value
        return data

    return mutate


# (id, mutation of the table's JSON, field named, whether the whole file is skipped)
ENTRY_CASES = [
    ("block-wrong-type", break_entry(lambda e: e["config"].update(BLOCK="256")), "config.BLOCK"),
    ("block-not-pow2", break_entry(lambda e: e["config"].update(BLOCK=384)), "config.BLOCK"),
    ("block-out-of-range", break_entry(lambda e: e["config"].update(BLOCK=32768)), "config.BLOCK"),
    ("warps-3", break_entry(lambda e: e["config"].update(num_warps=3)), "config.num_warps"),
    ("warps-64", break_entry(lambda e: e["config"].update(num_warps=64)), "config.num_warps"),
    ("stages-0", break_entry(lambda e: e["config"].update(num_stages=0)), "config.num_stages"),
    ("stages-9", break_entry(lambda e: e["config"].update(num_stages=9)), "config.num_stages"),
    ("unknown-param", break_entry(lambda e: e["config"].update(BLK=256)), "config.BLK"),
    ("missing-param", break_entry(lambda e: e["config"].pop("num_warps")), "config.num_warps"),
    ("config-not-object", break_entry(lambda e: e.update(config=[256, 1, 1])), "config"),
    ("unknown-entry-field", break_entry(lambda e: e.update(note="fast")), "note"),
    ("missing-time", break_entry(lambda e: e.pop("time_ms")), "time_ms"),
    ("time-wrong-type", break_entry(lambda e: e.update(time_ms="fast")), "time_ms"),
    ("time-negative", break_entry(lambda e: e.update(time_ms=-1.0)), "time_ms"),
    ("time-nan", break_entry(lambda e: e.update(time_ms=float("nan"))), "time_ms"),
    ("key-wrong-type", break_entry(lambda e: e["key"].update(HV="8")), "key.HV"),
    ("key-unknown-field", break_entry(lambda e: e["key"].update(K=128)), "key.K"),
    ("key-missing-field", break_entry(lambda e: e["key"].pop("dtype")), "key.dtype"),
    ("key-bucket-not-pow2", break_entry(lambda e: e["key"].update(T=100)), "key.T"),
    ("key-path-like-dtype", break_entry(lambda e: e["key"].update(dtype="../bf16")), "key.dtype"),
]
FILE_CASES = [
    ("schema-2", set_top("schema", 2), "schema"),
    ("schema-string", set_top("schema", "1"), "schema"),
    ("unknown-kernel", set_top("kernel", "gdn_nope"), "kernel"),
    ("path-like-kernel", set_top("kernel", "../gdn_gating"), "kernel"),
    ("arch-of-another-folder", set_top("arch", "sm80"), "arch"),
    ("unknown-top-field", set_top("comment", "hand edited"), "comment"),
    ("entries-not-list", set_top("entries", {"0": {}}), "entries"),
    ("path-like-gpu-name", lambda d: d["made_with"].update(gpu="../../etc") or d, "made_with.gpu"),
    ("missing-kernel-hash", lambda d: d["made_with"].pop("kernel_hash") and d, "made_with.kernel_hash"),
    ("missing-made-with", lambda d: d.pop("made_with") and d, "made_with"),
    ("interpret-not-boolean", lambda d: d["made_with"].update(interpret="no") or d, "made_with.interpret"),
    ("sweep-id-not-a-number", lambda d: d["made_with"].update(sweep_id="1") or d, "made_with.sweep_id"),
]


def write_json(root: Path, data, kernel: str = "gdn_gating", arch: str = "sm90") -> Path:
    path = root / arch / f"{kernel}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def run_gating(device, tokens: int = 37, HV: int = 8) -> float:
    """Forward through the public function; the worst relative error of g and beta."""
    a = torch.randn(tokens, HV, device=device).to(torch.bfloat16)
    b = torch.randn(tokens, HV, device=device).to(torch.bfloat16)
    A_log = torch.log(torch.empty(HV, device=device).uniform_(1, 16))
    dt_bias = torch.randn(HV, device=device)
    g, beta = fused_gdn_gating(A_log, a, b, dt_bias)
    ref = gating_reference({"A_log": A_log, "a": a, "b": b, "dt_bias": dt_bias})
    return max(relative_error(g, ref["g"]), relative_error(beta, ref["beta"]))


@pytest.mark.parametrize(("mutate", "field"), [c[1:] for c in ENTRY_CASES], ids=[c[0] for c in ENTRY_CASES])
def test_bad_entry_is_skipped_with_one_warning_and_the_rest_of_the_file_is_used(
    tables, device, mutate, field
):
    path = write_json(tables, mutate(gating_table_json()))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        error = run_gating(device, tokens=37)  # bucket T=64: the broken entry's key
        for T in (128, 4096):
            resolve_config(GATING, gating_key(T), device)
    (message,) = table_warnings(record)
    assert str(path) in message and "entry 0" in message and f"field {field!r}" in message, message
    assert error < 1e-5
    # The broken entry is never used: T=64 takes the nearest valid bucket, T=128 (BLOCK 512).
    broken = report_for(gating_key(64))
    assert (broken.source, broken.entry_key, broken.config["BLOCK"]) == ("nearest", gating_key(128), 512)
    for T, index in ((128, 1), (4096, 2)):
        hit = report_for(gating_key(T))
        assert (hit.source, hit.file, hit.entry) == ("exact", str(path), index)


@pytest.mark.parametrize(("mutate", "field"), [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_bad_file_is_skipped_with_one_warning_and_defaults_are_used(tables, device, mutate, field):
    path = write_json(tables, mutate(gating_table_json()))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        error = run_gating(device, tokens=37)
        resolve_config(GATING, gating_key(4096), device)
    (message,) = table_warnings(record)
    assert str(path) in message and f"field {field!r}" in message and "file skipped" in message, message
    assert error < 1e-5
    assert {r.source for r in resolution_report()} == {"default"}


@pytest.mark.parametrize(
    "text",
    ["{ not json", "", "[1, 2]", '"a string"', "\xff\xfe"],
    ids=["broken", "empty", "list", "string", "bytes"],
)
def test_file_that_is_not_a_table_object_is_skipped(tables, device, text):
    path = write_json(tables, text)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert run_gating(device, tokens=5) < 1e-5
    (message,) = table_warnings(record)
    assert str(path) in message and "file skipped" in message


def test_duplicate_key_keeps_the_first_entry(tables):
    data = gating_table_json()
    data["entries"].append({**entry_64(data), "config": {"BLOCK": 4096, "num_warps": 4, "num_stages": 1}})
    write_json(tables, data)
    config, messages = resolve_quietly(GATING, gating_key(64))
    assert config["BLOCK"] == 256
    (message,) = messages
    assert "entry 3" in message and "'key'" in message and "duplicate of entry 0" in message


@pytest.mark.parametrize(
    ("mutate", "field", "entry_index"),
    [(c[1], c[2], 0) for c in ENTRY_CASES[:: len(ENTRY_CASES) // 6]]
    + [(c[1], c[2], None) for c in FILE_CASES],
    ids=[c[0] for c in ENTRY_CASES[:: len(ENTRY_CASES) // 6]] + [c[0] for c in FILE_CASES],
)
def test_strict_mode_raises_naming_file_entry_and_field(tables, monkeypatch, mutate, field, entry_index):
    monkeypatch.setenv(_tables.ENV_STRICT, "1")
    path = write_json(tables, mutate(gating_table_json()))
    with pytest.raises(TableError) as raised:
        resolve_config(GATING, gating_key(128), CPU)
    message = str(raised.value)
    assert str(path) in message and f"field {field!r}" in message, message
    if entry_index is not None:
        assert f"entry {entry_index}" in message


def test_strict_mode_raises_on_invalid_json(tables, monkeypatch):
    monkeypatch.setenv(_tables.ENV_STRICT, "1")
    path = write_json(tables, "{ not json")
    with pytest.raises(TableError, match="invalid JSON") as raised:
        resolve_config(GATING, gating_key(128), CPU)
    assert str(path) in str(raised.value)


def test_strict_mode_raises_on_an_arch_without_tables_or_a_kernel_without_a_table(tables, monkeypatch):
    monkeypatch.setenv(_tables.ENV_STRICT, "1")
    with pytest.raises(TableError, match="no tables for sm90"):
        resolve_config(GATING, gating_key(128), CPU)
    write_table(tables, "sm90", ROWSUM, [entry(rowsum_key(64), BLOCK=64, num_warps=1)], MADE_WITH)
    _tables.reset()
    with pytest.raises(TableError, match="no valid table for kernel gdn_gating on sm90"):
        resolve_config(GATING, gating_key(128), CPU)


def test_strict_mode_lets_a_structure_spec_without_a_table_run_its_delegating_default(tables, monkeypatch):
    # chunk_fused's default runs chunk_state and chunk_output on their own tables: with the arch's other
    # tables present and none of its own, strict mode resolves its default instead of failing every
    # prefill call.
    from gdn_kernels.chunk_fused import SPEC as STRUCTURE

    monkeypatch.setenv(_tables.ENV_STRICT, "1")
    write_table(tables, "sm90", GATING, GOOD_ENTRIES, MADE_WITH)
    key = STRUCTURE.key(
        dtype="bfloat16", H=2, HV=8, K=128, V=128, T=8192, N=1, state_dtype="float32", state_layout="kv"
    )
    assert STRUCTURE.table_optional and not GATING.table_optional
    assert resolve_config(STRUCTURE, key, CPU) == STRUCTURE.default


def test_a_valid_table_passes_strict_mode(tables, monkeypatch):
    monkeypatch.setenv(_tables.ENV_STRICT, "1")
    write_table(tables, "sm90", GATING, GOOD_ENTRIES, MADE_WITH)
    assert resolve_config(GATING, gating_key(4096), CPU) == GOOD_ENTRIES[2].config


# --------------------------------------------------------------------------------------------------
# Resolution order


def test_exact_then_nearest_bucket_then_default(tables):
    entries = [entry(rowsum_key(T), BLOCK=T, num_warps=1) for T in (64, 256)]
    path = write_table(tables, "sm90", ROWSUM, entries, MADE_WITH)
    cases = {
        64: ("exact", 64),
        256: ("exact", 256),
        # 128 is one step from 64 and from 256; BLOCK 64 cannot cover T=128, so 256 serves it.
        128: ("nearest", 256),
        32: ("nearest", 64),  # tie-free: 64 is one step, 256 three
        1024: ("default", None),  # both neighbours' BLOCK is too small for T=1024
    }
    for T, (source, block) in cases.items():
        config, messages = resolve_quietly(ROWSUM, rowsum_key(T))
        assert messages == []
        row = report_for(rowsum_key(T))
        assert row.source == source, (T, row)
        assert config == (
            ROWSUM.default if block is None else Config.of(BLOCK=block, num_warps=1, num_stages=1)
        )
        if source != "default":
            assert row.file == str(path)
    # Another shape (V) never borrows these entries.
    assert resolve_quietly(ROWSUM, rowsum_key(64, V=64))[0] == ROWSUM.default
    assert report_for(rowsum_key(64, V=64)).reason == "no entry of this shape"


def test_nearest_bucket_tie_goes_to_the_smaller_bucket(tables):
    entries = [entry(rowsum_key(T), BLOCK=256, num_warps=w) for T, w in ((64, 1), (256, 4))]
    write_table(tables, "sm90", ROWSUM, entries, MADE_WITH)
    config, _ = resolve_quietly(ROWSUM, rowsum_key(128))
    assert config["num_warps"] == 1
    assert report_for(rowsum_key(128)).entry_key == rowsum_key(64)


def test_device_folder_before_arch_folder(tables, monkeypatch):
    monkeypatch.setattr(_tables, "_device_name", lambda device: "NVIDIA H200")
    write_table(
        tables, "sm90", ROWSUM, [entry(rowsum_key(64), BLOCK=64, num_warps=1)], MADE_WITH, "NVIDIA H200"
    )
    arch_entries = [entry(rowsum_key(T), BLOCK=256, num_warps=4) for T in (64, 256)]
    arch_path = write_table(tables, "sm90", ROWSUM, arch_entries, MADE_WITH)
    assert resolve_quietly(ROWSUM, rowsum_key(64))[0]["BLOCK"] == 64
    assert "NVIDIA_H200" in report_for(rowsum_key(64)).file
    # A key the device table lacks comes exactly from the arch folder, not from a nearer device bucket.
    assert resolve_quietly(ROWSUM, rowsum_key(256))[0]["BLOCK"] == 256
    assert report_for(rowsum_key(256)).file == str(arch_path)


def test_path_like_device_name_skips_the_device_folder(tables, monkeypatch):
    monkeypatch.setattr(_tables, "_device_name", lambda device: "../../evil")
    write_table(tables, "sm90", ROWSUM, [entry(rowsum_key(64), BLOCK=128, num_warps=1)], MADE_WITH)
    config, messages = resolve_quietly(ROWSUM, rowsum_key(64))
    assert config["BLOCK"] == 128
    (message,) = messages
    assert "'../../evil'" in message


def test_config_dir_before_shipped_tables(tables, clean_tables):
    shipped = clean_tables
    write_table(
        shipped, "sm90", ROWSUM, [entry(rowsum_key(T), BLOCK=256, num_warps=4) for T in (64, 256)], MADE_WITH
    )
    write_table(tables, "sm90", ROWSUM, [entry(rowsum_key(64), BLOCK=64, num_warps=1)], MADE_WITH)
    assert resolve_quietly(ROWSUM, rowsum_key(64))[0]["BLOCK"] == 64
    assert resolve_quietly(ROWSUM, rowsum_key(256))[0]["num_warps"] == 4
    assert report_for(rowsum_key(256)).file.startswith(str(shipped))


def test_cpu_device_without_arch_uses_defaults_silently(tmp_path, monkeypatch, clean_tables):
    write_table(clean_tables, "sm90", ROWSUM, [entry(rowsum_key(64), BLOCK=64, num_warps=1)], MADE_WITH)
    config, messages = resolve_quietly(ROWSUM, rowsum_key(64))
    assert (config, messages) == (ROWSUM.default, [])
    assert "cpu device" in report_for(rowsum_key(64)).reason


@pytest.mark.parametrize("K", [16, 32, 64, 128, 256])
def test_the_default_of_every_key_is_a_config_its_space_accepts(K):
    # The defaults are chosen for K = V = 128; chunk_wu's and chunk_kkt_solve's BK 64 exceed pow2(K)
    # at the smoke preset's K = V = 32, and at K = 16 no BK candidate is small enough.
    for spec in kernel_specs().values():
        for workload in (Workload(1, 2, K, K, tokens=100), Workload(1, 2, K, K, 3, 3, phase="decode")):
            if workload.phase in spec.phases:
                key = spec.key_for(workload)
                assert not spec.space.problems(spec.default_for(key), key), (spec.name, key.label)


def test_a_key_without_a_table_entry_runs_the_default_its_space_accepts(tables, monkeypatch):
    wu = kernel_specs()["chunk_wu"]
    key = wu.key_for(Workload(1, 2, 32, 32, tokens=100))
    assert wu.space.problems(wu.default, key)  # BK 64, BV 64 at K = V = 32
    write_table(tables, "sm90", wu, [], MADE_WITH)  # a table, but no entry of this shape
    config, messages = resolve_quietly(wu, key)
    assert config == Config.of(BK=32, BV=32, num_warps=4, num_stages=2) and messages == []
    assert report_for(key).source == "default"


def test_arch_without_tables_warns_once(tables):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for T in (64, 128):
            assert resolve_config(ROWSUM, rowsum_key(T), CPU) == ROWSUM.default
        assert resolve_config(GATING, gating_key(64), CPU) == GATING.default
    (message,) = table_warnings(record)
    assert "no tables for sm90" in message


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_a_config_dir_on_a_cpu_device_without_an_arch_says_it_is_ignored(tmp_path, monkeypatch, strict):
    write_table(tmp_path, "sm90", GATING, [entry(gating_key(64), BLOCK=256, num_warps=1)], MADE_WITH)
    monkeypatch.setenv(_tables.ENV_CONFIG_DIR, str(tmp_path))
    if strict:
        monkeypatch.setenv(_tables.ENV_STRICT, "1")
        with pytest.raises(
            TableError, match=r"GDN_TUNE_CONFIG_DIR=.* is ignored on a cpu device.*GDN_TUNE_ARCH"
        ):
            resolve_config(GATING, gating_key(64), CPU)
        return
    config, messages = resolve_quietly(GATING, gating_key(64))
    assert config == GATING.default
    assert (
        len(messages) == 1 and "is ignored on a cpu device" in messages[0] and "GDN_TUNE_ARCH" in messages[0]
    )
    assert resolve_quietly(GATING, gating_key(128))[1] == []  # once per process


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_a_table_file_for_an_unknown_kernel_is_reported(tables, monkeypatch, strict):
    write_table(tables, "sm90", GATING, [entry(gating_key(64), BLOCK=256, num_warps=1)], MADE_WITH)
    stray = tables / "sm90" / "chunk_stat.json"  # a typo: no kernel reads it
    stray.write_text((tables / "sm90" / "gdn_gating.json").read_text())
    if strict:
        monkeypatch.setenv(_tables.ENV_STRICT, "1")
        for _ in range(2):  # every call, until the file is gone
            with pytest.raises(TableError, match=r"chunk_stat\.json: no kernel is named 'chunk_stat'"):
                resolve_config(GATING, gating_key(64), CPU)
        return
    config, messages = resolve_quietly(GATING, gating_key(64))
    assert config == Config.of(BLOCK=256, num_warps=1, num_stages=1)  # the valid table is still used
    assert len(messages) == 1 and "chunk_stat.json: no kernel is named 'chunk_stat'" in messages[0]
    assert resolve_quietly(ROWSUM, rowsum_key(64))[1] == []  # fake_rowsum is a kernel; reported once


def test_the_registry_names_every_kernel():
    # The unknown-file check reads these names instead of importing every kernel module.
    from gdn_kernels._registry import KERNEL_NAMES

    assert tuple(kernel_specs()) == KERNEL_NAMES


def test_a_first_resolution_imports_no_other_kernel_module():
    # A serving process's first prefill call must not pay for importing the decode kernels (Triton
    # decorating each of them: tens of ms), only to learn the names of the shipped tables.
    code = (
        "import sys, torch\n"
        "from gdn_kernels import Workload, _tables\n"
        "from gdn_kernels.chunk_wu import SPEC\n"
        "key = SPEC.key_for(Workload(H=16, HV=64, K=128, V=128, tokens=8192))\n"
        "with _tables.resolving_as('meta', _tables.TablePlace('sm90', None)):\n"
        "    _tables.resolve_config(SPEC, key, torch.device('meta'))\n"
        "print(sorted(m for m in ('gdn_kernels.gating', 'gdn_kernels.fused_recurrent') if m in sys.modules))"
    )
    env = {k: v for k, v in os.environ.items() if k not in (_tables.ENV_CONFIG_DIR, _tables.ENV_ARCH)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]"], result.stdout


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_unknown_arch_override(monkeypatch, strict):
    monkeypatch.setenv(_tables.ENV_ARCH, "sm75")
    if strict:
        monkeypatch.setenv(_tables.ENV_STRICT, "1")
        with pytest.raises(TableError, match="sm75"):
            resolve_config(ROWSUM, rowsum_key(64), CPU)
    else:
        config, messages = resolve_quietly(ROWSUM, rowsum_key(64))
        assert config == ROWSUM.default and len(messages) == 1 and "sm75" in messages[0]


def test_stale_table_entries_are_used_where_the_kernel_accepts_them(tables):
    data = json.loads(
        table_text(
            "sm90",
            ROWSUM,
            [entry(rowsum_key(T), BLOCK=T, num_warps=1) for T in (64, 128)],
            {**MADE_WITH, "kernel_hash": "0123456789abcdef"},
        )
    )
    data["entries"][1]["config"]["BLOCK"] = 8192  # the current kernel accepts at most 4096
    path = write_json(tables, data, kernel="fake_rowsum")
    config, messages = resolve_quietly(ROWSUM, rowsum_key(64))
    assert config["BLOCK"] == 64
    (message,) = messages  # the refused entry, when the table loads; staleness alone is no warning
    assert str(path) in message and "entry 1" in message and "config.BLOCK" in message
    config, messages = resolve_quietly(ROWSUM, rowsum_key(128))
    # Its own entry was refused and the T=64 entry's BLOCK cannot cover 128: the default, silently.
    assert (config, messages) == (ROWSUM.default, [])


def test_steady_state_is_cached_and_loading_happens_once(tables):
    path = write_table(tables, "sm90", ROWSUM, [entry(rowsum_key(64), BLOCK=64, num_warps=1)], MADE_WITH)
    first = resolve_config(ROWSUM, rowsum_key(64), CPU)
    path.unlink()  # a loaded table is not read again
    assert resolve_config(ROWSUM, rowsum_key(64), CPU) is first
    # A new key of the same kernel resolves against the table as loaded: the T=64 entry is the
    # nearest bucket of T=32 (its BLOCK 64 covers 32), though the file is gone.
    assert resolve_config(ROWSUM, rowsum_key(32), CPU) == first
    _tables.reset()
    config, _ = resolve_quietly(ROWSUM, rowsum_key(64))
    assert config == ROWSUM.default


def test_resolution_report_names_file_entry_or_default(tables):
    path = write_table(
        tables, "sm90", ROWSUM, [entry(rowsum_key(T), BLOCK=256, num_warps=1) for T in (64, 256)], MADE_WITH
    )
    for T in (256, 128):
        resolve_config(ROWSUM, rowsum_key(T), CPU)
    resolve_config(ROWSUM, rowsum_key(64, V=32), CPU)
    rows = {r.key: r for r in resolution_report()}
    assert (rows[rowsum_key(256)].source, rows[rowsum_key(256)].file, rows[rowsum_key(256)].entry) == (
        "exact",
        str(path),
        1,
    )
    assert (rows[rowsum_key(128)].source, rows[rowsum_key(128)].entry) == ("nearest", 0)
    assert rows[rowsum_key(64, V=32)].source == "default"
    assert "default" in rows[rowsum_key(64, V=32)].describe()
    assert f"{path} entry 1" in rows[rowsum_key(256)].describe()


def test_nothing_in_a_table_is_executed(tables, tmp_path):
    marker = tmp_path / "executed"
    data = gating_table_json()
    data["made_with"]["gpu"] = f"__import__('os').system('touch {marker}')"
    entry_64(data)["config"]["BLOCK"] = f"__import__('pathlib').Path('{marker}').touch()"
    write_json(tables, data)
    resolve_quietly(GATING, gating_key(64))
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------
# Writing


def test_write_is_deterministic_and_round_trips(tmp_path):
    entries = [
        entry(gating_key(4096), time_ms=0.123456789, default_time_ms=0.2, BLOCK=2048, num_warps=8),
        entry(gating_key(64), BLOCK=256, num_warps=1, default_time_ms=None),
        entry(gating_key(128, HV=16), BLOCK=512, num_warps=2),
        entry(gating_key(1024), BLOCK=1024, num_warps=4),
    ]
    first = write_table(tmp_path / "a", "sm90", GATING, entries, MADE_WITH).read_bytes()
    second = write_table(
        tmp_path / "b", "sm90", GATING, entries[::-1], dict(reversed(MADE_WITH.items()))
    ).read_bytes()
    assert first == second
    # Readable by whoever serves, as a file the umask lets through (not private as a temp file is).
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a" / "sm90" / "gdn_gating.json").stat().st_mode & 0o777 == 0o666 & ~umask
    data = json.loads(first)
    assert [(e["key"]["HV"], e["key"]["T"]) for e in data["entries"]] == [
        (8, 64),
        (8, 1024),
        (8, 4096),
        (16, 128),
    ]
    assert data["entries"][2]["time_ms"] == 0.123457  # 6 significant digits
    assert data["made_with"]["kernel_hash"] == GATING.source_hash()
    table, problems = load_table(tmp_path / "a" / "sm90" / "gdn_gating.json", {"gdn_gating": GATING}, "sm90")
    assert problems == []
    loaded = {e.key: (e.config, e.default_time_ms) for _, e in table.entries.values()}
    assert loaded == {e.key: (e.config, e.default_time_ms) for e in entries}


def test_written_table_matches_the_published_json_schema(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "tuned_configs" / "schema-1.json").read_text())
    path = write_table(tmp_path, "sm90", GATING, GOOD_ENTRIES, MADE_WITH, device_name="NVIDIA H200")
    assert path == tmp_path / "sm90" / "NVIDIA_H200" / "gdn_gating.json"
    jsonschema.validate(json.loads(path.read_text()), schema)
    bad = json.loads(path.read_text())
    bad["entries"][0]["config"]["num_warps"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_write_is_atomic(tmp_path, monkeypatch):
    path = write_table(tmp_path, "sm90", GATING, GOOD_ENTRIES[:1], MADE_WITH)
    before = path.read_bytes()

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_table(tmp_path, "sm90", GATING, GOOD_ENTRIES, MADE_WITH)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["gdn_gating.json"]


@pytest.mark.parametrize(
    ("entries", "device_name", "message"),
    [
        ([GOOD_ENTRIES[0], GOOD_ENTRIES[0]], None, "two entries"),
        (GOOD_ENTRIES, "../evil", "cannot name a table folder"),
        ([entry(gating_key(64), time_ms=float("nan"), BLOCK=256, num_warps=1)], None, "positive finite"),
    ],
    ids=["duplicate-key", "path-like-device", "nan-time"],
)
def test_write_refuses_bad_entries(tmp_path, entries, device_name, message):
    with pytest.raises(ValueError, match=message):
        write_table(tmp_path, "sm90", GATING, entries, MADE_WITH, device_name)
    assert not any(tmp_path.rglob("*.json"))


def test_merge_replaces_swept_keys_and_keeps_the_others(tmp_path):
    write_table(tmp_path, "sm90", GATING, GOOD_ENTRIES, MADE_WITH)
    swept = [entry(gating_key(64), BLOCK=1024, num_warps=4), entry(gating_key(256), BLOCK=512, num_warps=2)]
    path, dropped = merge_into_table(tmp_path, "sm90", GATING, swept, {**MADE_WITH, "date": "2026-02-01"})
    assert dropped == []
    table, _ = load_table(path, {"gdn_gating": GATING})
    blocks = {key["T"]: e.config["BLOCK"] for key, (_, e) in table.entries.items()}
    assert blocks == {64: 1024, 128: 512, 256: 512, 4096: 2048}
    assert table.made_with["date"] == "2026-02-01"


# --------------------------------------------------------------------------------------------------
# Compiling for a target


# --------------------------------------------------------------------------------------------------
# check / show / diff


def test_check_compiles_every_entry_for_its_arch(tmp_path):
    write_table(tmp_path, "sm90", GATING, GOOD_ENTRIES[:2], MADE_WITH)
    write_table(tmp_path, "sm120", GATING, GOOD_ENTRIES[2:], {**MADE_WITH, "compute_capability": "12.0"})
    report = check_tables(tmp_path, specs={"gdn_gating": GATING})
    assert report.ok, report.problems
    assert report.archs == ("sm90", "sm120")
    assert [(f.arch, f.entries, f.compiled, f.stale) for f in report.files] == [
        ("sm90", 2, 2, False),
        ("sm120", 1, 1, False),
    ]


def test_check_reports_stale_tables_compile_failures_and_bad_files(tmp_path):
    specs = {"gdn_gating": GATING, "fake_rowsum": ROWSUM}
    write_table(tmp_path, "sm90", GATING, GOOD_ENTRIES[:1], {**MADE_WITH, "kernel_hash": "0123456789abcdef"})
    write_table(tmp_path, "sm90", ROWSUM, [entry(rowsum_key(64), BLOCK=96, num_warps=1)], MADE_WITH)
    write_json(tmp_path, "{", kernel="gdn_nothing")
    (tmp_path / "sm99").mkdir()
    report = check_tables(tmp_path, specs=specs)
    assert not report.ok
    text = "\n".join(report.problems)
    assert "stale: made for kernel hash 0123456789abcdef" in text
    assert "entry 0" in text and "BLOCK96" in text and "does not compile" in text
    assert "gdn_nothing.json" in text and "invalid JSON" in text
    assert "sm99: not an arch folder" in text
    stale = {f.kernel: f.stale for f in report.files}
    assert stale == {"gdn_gating": True, "fake_rowsum": False, "gdn_nothing": False}


def test_check_unknown_kernel_and_missing_arch(tmp_path):
    data = json.loads(table_text("sm90", ROWSUM, [entry(rowsum_key(64), BLOCK=64, num_warps=1)], MADE_WITH))
    write_json(tmp_path, data, kernel="fake_rowsum")
    report = check_tables(
        tmp_path, archs=["sm90", "sm100"], compile_entries=False, specs={"gdn_gating": GATING}
    )
    text = "\n".join(report.problems)
    assert "unknown kernel 'fake_rowsum'" in text
    assert "no tables for sm100" in text


def test_check_coverage_of_a_preset(tmp_path):
    # The smoke preset asks gdn_gating for HV=2 at T=128 (prefill, 100 tokens) and T=64 (decode).
    write_table(tmp_path, "sm90", GATING, [entry(gating_key(128, HV=2), BLOCK=256, num_warps=1)], MADE_WITH)
    report = check_tables(tmp_path, preset="smoke", compile_entries=False, specs={"gdn_gating": GATING})
    (coverage,) = report.coverage
    assert (coverage.wanted, coverage.covered, coverage.missing) == (2, 1, (gating_key(64, HV=2).label,))
    assert any("1 of 2 keys of preset smoke" in p for p in report.problems)


def test_show_lists_entries_with_speedup(tmp_path):
    write_table(tmp_path, "sm90", GATING, GOOD_ENTRIES, MADE_WITH)
    write_table(tmp_path, "sm80", GATING, GOOD_ENTRIES[:1], MADE_WITH)
    rows, problems = show_tables(tmp_path, arch="sm90", kernel="gdn_gating", specs={"gdn_gating": GATING})
    assert problems == []
    assert [(r.key["T"], r.config["BLOCK"], r.speedup) for r in rows] == [
        (64, 256, 2.0),
        (128, 512, 2.0),
        (4096, 2048, 2.0),
    ]
    with pytest.raises(ValueError, match="unknown kernel"):
        show_tables(tmp_path, kernel="nope", specs={"gdn_gating": GATING})


def test_diff_lists_added_removed_changed_and_retimed(tmp_path):
    write_table(tmp_path / "a", "sm90", GATING, GOOD_ENTRIES, MADE_WITH)
    new = [
        entry(gating_key(64), BLOCK=256, num_warps=1, time_ms=0.008),  # retimed
        entry(gating_key(128), BLOCK=1024, num_warps=4, time_ms=0.005),  # changed
        entry(gating_key(256), BLOCK=512, num_warps=2),  # added; 4096 removed
    ]
    write_table(tmp_path / "b", "sm90", GATING, new, MADE_WITH)
    result = diff_tables(tmp_path / "a", tmp_path / "b", specs={"gdn_gating": GATING})
    assert [(r.change, r.key["T"]) for r in result.rows] == [
        ("retimed", 64),
        ("changed", 128),
        ("added", 256),
        ("removed", 4096),
    ]
    changed = result.rows[1]
    assert (changed.config_a["BLOCK"], changed.config_b["BLOCK"], changed.speedup_a, changed.speedup_b) == (
        512,
        1024,
        2.0,
        4.0,
    )
    assert result.problems == ()
    assert diff_tables(tmp_path / "a", tmp_path / "a", specs={"gdn_gating": GATING}).rows == ()


@pytest.mark.gpu
def test_cuda_device_finds_its_arch_and_device_folder(tmp_path, monkeypatch):
    """On the GPU host: arch from the compute capability, the device folder from the device name."""
    device = torch.device("cuda")
    arch = arch_for_capability(torch.cuda.get_device_capability(device))
    if arch is None:
        pytest.skip(f"no arch for {torch.cuda.get_device_name(device)}")
    root = tmp_path / "tables"
    monkeypatch.setenv(_tables.ENV_CONFIG_DIR, str(root))
    device_name = torch.cuda.get_device_name(device)
    key = gating_key(8192, HV=64)
    write_table(root, arch, GATING, [entry(key, BLOCK=2048, num_warps=8)], MADE_WITH, device_name)
    write_table(root, arch, GATING, [entry(key, BLOCK=512, num_warps=2)], MADE_WITH)
    assert run_gating(device, tokens=8000, HV=64) < 1e-5  # bucket T=8192
    row = report_for(key)
    assert (row.source, row.config["BLOCK"]) == ("exact", 2048)
    assert f"{arch}/{device_folder_name(device_name)}/" in row.file
