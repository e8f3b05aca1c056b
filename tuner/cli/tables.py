"""`gdn-tune check / show / diff`: review the static tables before a release. The logic is in
`gdn_tune.tables`; these commands parse options and print."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from gdn_kernels.tuning import ARCHS

from .options import domain_errors, json_option, preset_option

config_dir_option = click.option(
    "--config-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Tables to read instead of the shipped ones (a folder holding sm80/, sm90/, ...).",
)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _format_time(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.4f}"


def _format_speedup(speedup: float | None) -> str:
    return "-" if speedup is None else f"{speedup:.2f}x"


def _label(mapping: dict[str, Any] | None) -> str:
    return "-" if mapping is None else " ".join(f"{k}={v}" for k, v in mapping.items())


@click.command()
@click.option(
    "--arch",
    type=click.Choice([*ARCHS, "all"]),
    default="all",
    show_default=True,
    help="Arch to check; 'all' checks every arch folder present.",
)
@config_dir_option
@preset_option("Report how many of this preset's keys have an exact entry.")
@click.option("--strict", is_flag=True, help="Exit non-zero on any problem (CI and releases).")
@click.option("--no-compile", is_flag=True, help="Skip compiling entries for their target (faster).")
@click.option(
    "--allow-interpreter-timings",
    is_flag=True,
    help="Accept tables timed under the Triton interpreter (CPU wall clock), as pipeline tests write them.",
)
@json_option
@domain_errors
def check(
    arch: str,
    config_dir: Path | None,
    preset: str | None,
    strict: bool,
    no_compile: bool,
    allow_interpreter_timings: bool,
    as_json: bool,
) -> None:
    """Validate the tables, compile every entry for its arch and check it fits shared memory (no GPU
    needed), check each table's provenance (GPU timings of its arch, recorded), report stale tables
    (made for another version of a kernel) and a preset's coverage."""
    from ..tables import check_tables  # imports torch and triton: only for the command itself

    report = check_tables(
        config_dir,
        archs=None if arch == "all" else [arch],
        preset=preset,
        compile_entries=not no_compile,
        allow_interpreter_timings=allow_interpreter_timings,
    )
    if as_json:
        _echo_json({**dataclasses.asdict(report), "ok": report.ok})
    else:
        click.echo(f"tables: {report.root} (archs: {', '.join(report.archs) or 'none'})")
        for f in report.files:
            status = "stale" if f.stale else ("problems" if f.problems else "ok")
            shared = "" if f.max_shared_bytes is None else f", shared memory up to {f.max_shared_bytes} B"
            where = f"{f.arch}/{f.device_folder}" if f.device_folder else f.arch
            click.echo(f"  {where}/{f.kernel}: {f.entries} entries, {f.compiled} compiled{shared}: {status}")
        for c in report.coverage:
            click.echo(f"  coverage {c.arch}/{c.kernel}: {c.covered}/{c.wanted} keys of preset {preset}")
        for problem in report.problems:
            click.echo(f"problem: {problem}")
        click.echo("ok" if report.ok else f"{len(report.problems)} problem(s)")
    if strict and not report.ok:
        raise SystemExit(1)


@click.command()
@click.option("--arch", type=click.Choice(ARCHS), default=None, help="Only this arch.")
@click.option("--kernel", default=None, help="Only this kernel.")
@config_dir_option
@json_option
@domain_errors
def show(arch: str | None, kernel: str | None, config_dir: Path | None, as_json: bool) -> None:
    """The entries of the tables: key, config, time and speedup over the kernel's default config."""
    from ..tables import show_tables

    rows, problems = show_tables(config_dir, arch=arch, kernel=kernel)
    if as_json:
        _echo_json({"entries": [dataclasses.asdict(r) for r in rows], "problems": [str(p) for p in problems]})
        return
    header = (
        f"{'place':<18} {'kernel':<18} {'key':<44} {'config':<40} {'ms':>9} {'default ms':>10} {'speedup':>8}"
    )
    click.echo(header)
    for r in rows:
        place = f"{r.arch}/{r.device_folder}" if r.device_folder else r.arch
        click.echo(
            f"{place:<18} {r.kernel:<18} {_label(r.key):<44} {_label(r.config):<40} "
            f"{_format_time(r.time_ms):>9} {_format_time(r.default_time_ms):>10} {_format_speedup(r.speedup):>8}"
        )
    for problem in problems:
        click.echo(f"skipped: {problem}")


@click.command()
@click.argument("dir_a", type=click.Path(file_okay=False, path_type=Path))
@click.argument("dir_b", type=click.Path(file_okay=False, path_type=Path))
@json_option
@domain_errors
def diff(dir_a: Path, dir_b: Path, as_json: bool) -> None:
    """What changed from the tables in DIR_A to those in DIR_B: added, removed, changed and retimed
    entries, with the speedup over the default on each side."""
    from ..tables import diff_tables

    result = diff_tables(dir_a, dir_b)
    if as_json:
        _echo_json(dataclasses.asdict(result))
        return
    for r in result.rows:
        configs = (
            _label(r.config_b)
            if r.change == "added"
            else _label(r.config_a)
            if r.change in ("removed", "retimed")
            else f"{_label(r.config_a)} -> {_label(r.config_b)}"
        )
        speedups = f"speedup {_format_speedup(r.speedup_a)} -> {_format_speedup(r.speedup_b)}"
        click.echo(f"{r.change:<8} {r.place}/{r.kernel} {_label(r.key)}: {configs}; {speedups}")
    for problem in result.problems:
        click.echo(f"skipped: {problem}")
    counts = ", ".join(f"{result.count(c)} {c}" for c in ("added", "removed", "changed", "retimed"))
    click.echo(f"{counts} ({dir_a} -> {dir_b})")
