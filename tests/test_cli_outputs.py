"""The files the CLI writes (export, summary, trials, report): an unwritable path is an `Error:` naming
it and why, never a traceback, and a failed write leaves no partial file. The database holds sweeps
written straight into it (no trials run)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from _helpers import OTHER_KEY, record_sweep
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
