"""The commands over the sweep database (export, summary, trials, report) through click's runner: an
unwritable output is an `Error:` naming it and why, never a traceback, and a failed write leaves no
partial file; one mistake gets one exit code everywhere; report and summary say what their times are.
The database holds sweeps written straight into it (no trials run)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from _helpers import INTERPRETER, OTHER_KEY, record_sweep
from click.testing import CliRunner

from gdn_tune.cli import main
from gdn_tune.storage import Storage


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'gpu.db'}"
    storage = Storage(url)
    record_sweep(storage, "a", "NVIDIA H200")
    record_sweep(storage, "b", "NVIDIA H200", key=OTHER_KEY)
    return url


class FakePyplot:
    """Enough of matplotlib.pyplot for `report --png` (gdn-tune does not depend on matplotlib)."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}

    def subplots(self, figsize):
        fake = self

        class Axes:
            def barh(self, labels, values):
                fake.texts["bars"] = " ".join(labels)

            def axvline(self, *args, **kwargs):
                pass

            def set_xlabel(self, text):
                fake.texts["xlabel"] = text

            def set_title(self, text):
                fake.texts["title"] = text

        class Figure:
            def tight_layout(self):
                pass

            def savefig(self, path, dpi, format):
                Path(path).write_bytes(b"\x89PNG fake")

        return Figure(), Axes()

    def close(self, figure):
        pass


@pytest.fixture
def pyplot(monkeypatch) -> FakePyplot:
    fake = FakePyplot()
    matplotlib = types.ModuleType("matplotlib")
    matplotlib.use = lambda backend: None
    matplotlib.pyplot = fake
    monkeypatch.setitem(sys.modules, "matplotlib", matplotlib)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", fake)
    return fake


OUTPUTS = {
    "export": lambda db, path: ["export", "--gpu", "h200", "--db", db, "--out", path],
    "summary": lambda db, path: ["summary", "--db", db, "--out", path],
    "trials": lambda db, path: ["trials", "--db", db, "--parquet", path],
    "report": lambda db, path: ["report", "--db", db, "--png", path],
}


@pytest.mark.parametrize("command", OUTPUTS)
def test_an_unwritable_output_is_an_error_naming_the_path(command, db, pyplot):
    result = invoke(*OUTPUTS[command](db, "/proc/nope/out"))
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not a traceback
    assert "Error: cannot write /proc/nope/out" in result.output, result.output
    assert "No such file or directory" in result.output
    assert "target" not in result.output  # report: nothing printed before the failure


@pytest.mark.parametrize("command", OUTPUTS)
def test_a_failed_write_leaves_no_partial_file(command, db, pyplot, tmp_path, monkeypatch):
    import os

    def disk_full(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", disk_full)  # every file is written, then swapped in
    out = tmp_path / "out"
    out.mkdir()
    target = out / ("tables" if command == "export" else "file")
    result = invoke(*OUTPUTS[command](db, str(target)))
    assert result.exit_code == 1 and "disk full" in result.output, result.output
    assert "Error: cannot write " in result.output
    assert [p for p in out.rglob("*") if p.is_file()] == []


def test_report_png_has_a_title_the_target_and_units(db, pyplot, tmp_path):
    png = tmp_path / "speedups.png"
    result = invoke("report", "--db", db, "--png", str(png))
    assert result.exit_code == 0, result.output
    assert png.read_bytes().startswith(b"\x89PNG")
    assert "h200" in pyplot.texts["title"] and "NVIDIA H200" in pyplot.texts["title"]
    assert "×" in pyplot.texts["xlabel"] and "default" in pyplot.texts["xlabel"]


@pytest.mark.parametrize("command", ["sweep", "export", "report", "summary"])
def test_an_unknown_target_is_a_usage_error_in_every_command(command, db):
    result = invoke(command, "--gpu", "h201", "--db", db, *(["--interpret"] if command == "sweep" else []))
    assert result.exit_code == 2, result.output
    assert "unknown GPU target 'h201'" in result.output and "h200" in result.output


def test_trials_of_a_sweep_that_does_not_exist_is_a_usage_error(db, tmp_path):
    out = tmp_path / "trials.parquet"
    result = invoke("trials", "--db", db, "--parquet", str(out), "--sweep", "99")
    assert result.exit_code == 2 and "--sweep 99: no such sweep" in result.output, result.output
    assert "(sweeps: 1, 2)" in result.output and not out.exists()


def test_summary_prints_the_page_without_out_and_names_interpreter_time(tmp_path):
    url = f"sqlite:///{tmp_path / 'cpu.db'}"
    record_sweep(Storage(url), "cpu", INTERPRETER)
    result = invoke("summary", "--db", url)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# Sweep summary") and "| gdn_gating | 1 | 1 |" in result.output
    assert "timed CPU (interpreter)" in result.output and "timed GPU" not in result.output
    data = json.loads(invoke("summary", "--db", url, "--json").output)
    assert data["timing"] == "interpreter" and "timed_gpu_s" not in data["kernels"]["gdn_gating"]


def test_summary_of_gpu_sweeps_keeps_its_words(db):
    result = invoke("summary", "--db", db)
    assert result.exit_code == 0 and "| timed GPU |" in result.output, result.output


def test_report_png_without_matplotlib_fails_before_printing(db, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    result = invoke("report", "--db", db, "--png", str(tmp_path / "r.png"))
    assert result.exit_code == 1 and "--png needs matplotlib" in result.output
    assert "gdn_gating" not in result.output  # the table was not printed first


def test_report_json_gives_key_and_config_as_objects_like_show(db):
    result = invoke("report", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    row = json.loads(result.output)[0]
    assert row["key"] == {"dtype": "bfloat16", "HV": 2, "T": 128}
    assert row["config"] == {"BLOCK": 256, "num_stages": 1, "num_warps": 4}


def test_help_shows_the_preset_names_and_the_tpe_budget():
    sweep_help = invoke("sweep", "--help").output
    assert "default 32" in sweep_help and "anchors" in sweep_help and "smoke" in sweep_help
    assert "qwen3-next-80b-a3b" in invoke("check", "--help").output
