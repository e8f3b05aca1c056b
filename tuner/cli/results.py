"""`gdn-tune export`, `status`, `trials`, `report` and `summary`: thin commands over what a sweep's
database holds (export.py, results.py, summary.py). Each parses its options, calls one library function
and prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..constants import TRIAL_COLUMNS
from .options import db_option, domain_errors, extra_specs_option, json_option, target_option
from .plot import plot_speedups, pyplot


@click.command()
@target_option("Target whose sweeps to export.", required=True)
@db_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("tuned_configs"),
    show_default=True,
    help="Folder of the tables (one subfolder per arch).",
)
@click.option("--dry-run", is_flag=True, help="Print the diff of what would change; write nothing.")
@click.option("--per-device", is_flag=True, help="Write into the GPU's own folder (sm90/NVIDIA_H200/).")
@click.option(
    "--sweep",
    "sweep_ids",
    type=int,
    multiple=True,
    metavar="ID",
    help="Export only this sweep's winners (repeatable; gdn-tune status lists them). Default: every sweep.",
)
@click.option(
    "--allow-interpreter-timings",
    is_flag=True,
    help="Also write winners of --interpret sweeps, whose times are CPU wall clock, not GPU timings. "
    "For pipeline checks only: such tables must never ship (gdn-tune check refuses them).",
)
@extra_specs_option
@json_option
@domain_errors
def export(
    target: Any,
    db_url: str,
    out_dir: Path,
    dry_run: bool,
    per_device: bool,
    sweep_ids: tuple[int, ...],
    allow_interpreter_timings: bool,
    extra_specs: tuple[str, ...],
    as_json: bool,
) -> None:
    """Write the winners of the target's sweeps into its tables, merged with what is there.

    A table records the one GPU its entries were measured on: winners of interpreter sweeps are left
    out unless --allow-interpreter-timings, and an export that would mix two GPUs (or a GPU and the
    interpreter) in one file is refused before anything is written.
    """
    from ..export import export_tables

    result = export_tables(
        db_url,
        target,
        out_dir,
        dry_run,
        per_device,
        extra_specs,
        allow_interpreter_timings=allow_interpreter_timings,
        sweep_ids=sweep_ids,
    )
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
        return
    if dry_run:
        click.echo(result.diff or "no changes", nl=not result.diff)
    for f in result.files:
        verb = ("would write" if dry_run else "wrote") if f["changed"] else "unchanged"
        click.echo(f"{verb} {f['path']} ({f['swept_entries']} swept entries)")
    for line in result.skipped + result.dropped:
        click.echo(f"skipped: {line}")


@click.command()
@db_option
@json_option
@domain_errors
def status(db_url: str, as_json: bool) -> None:
    """Sweeps in the database and their progress."""
    from ..results import sweep_rows
    from ..storage import Storage

    rows = sweep_rows(Storage(db_url, must_exist=True))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no sweeps")
        return
    click.echo(
        f"{'id':>3} {'target':<8} {'status':<11} {'strategy':<8} {'winners':>9}  trials  (gpu, started)"
    )
    for r in rows:
        trials = ", ".join(f"{n} {s}" for s, n in r["trials"].items()) or "none"
        click.echo(
            f"{r['id']:>3} {r['target']:<8} {r['status']:<11} {r['strategy']:<8} "
            f"{r['problems_with_winner']:>4}/{r['problems']:<4}  {trials}  ({r['gpu_name']}, {r['started_at']})"
        )
        for claim in r["claims"]:  # the processes measuring it now, and how long since each was heard from
            click.echo(
                f"      measuring: {claim['claimant']}, {claim['problems']} problem(s), "
                f"last heartbeat {claim['heartbeat_age_s']} s ago"
            )


def _trials_help() -> str:
    columns = "\n".join(f"  {name}: {what}" for name, what in TRIAL_COLUMNS.items())
    return f"Every trial as a Parquet file (pyarrow), one row per trial.\n\nColumns:\n\n\b\n{columns}"


@click.command(help=_trials_help())
@click.option("--parquet", "path", required=True, type=click.Path(dir_okay=False), help="File to write.")
@click.option("--sweep", "sweep_id", type=int, help="Only this sweep's trials.")
@db_option
@domain_errors
def trials(path: str, sweep_id: int | None, db_url: str) -> None:
    from ..results import write_trials_parquet
    from ..storage import Storage

    count = write_trials_parquet(Storage(db_url, must_exist=True), path, sweep_id)
    click.echo(f"wrote {count} trials to {path}")


@click.command()
@target_option("Only this target's sweeps.")
@db_option
@click.option(
    "--png",
    type=click.Path(dir_okay=False),
    help="Also plot the speedups to this PNG (needs matplotlib, which gdn-tune does not depend on).",
)
@json_option
@domain_errors
def report(target: Any, db_url: str, png: str | None, as_json: bool) -> None:
    """Per kernel and shape: the winner, its time, the default's, and the speedup over the default."""
    from ..results import config_text, winners
    from ..storage import Storage

    plt = pyplot() if png else None  # before any output: a missing matplotlib fails first
    rows = winners(Storage(db_url, must_exist=True), target.name if target else None)
    latest = {}
    for row in rows:  # a later sweep of the same target, kernel and key replaces the earlier one
        latest[(row.target, row.kernel, row.key)] = row
    rows = list(latest.values())
    # Key and config as objects, as `gdn-tune show --json` gives them.
    table = [
        {
            "target": r.target,
            "gpu_name": r.gpu_name,
            "kernel": r.kernel,
            "key": r.key.as_dict(),
            "config": r.config.as_dict(),
            "time_ms": r.time_ms,
            "default_time_ms": r.default_time_ms,
            "speedup": r.speedup,
            "sweep_id": r.sweep_id,
            "interpret": r.interpret,
        }
        for r in rows
    ]
    if plt is not None and png is not None:
        # Written before the table is printed, so an unwritable path fails with nothing printed.
        plot_speedups(plt, table, Path(png))
    if as_json:
        click.echo(json.dumps(table, indent=2))
    elif not table:
        click.echo("no winners")
    else:
        click.echo(
            f"{'target':<8} {'kernel':<22} {'time ms':>10} {'default':>10} {'speedup':>8}  key / config"
        )
        for row, r in zip(rows, table, strict=True):
            default = f"{r['default_time_ms']:.4g}" if r["default_time_ms"] is not None else "-"
            speedup = f"{r['speedup']:.2f}x" if r["speedup"] is not None else "-"
            click.echo(
                f"{r['target']:<8} {r['kernel']:<22} {r['time_ms']:>10.4g} {default:>10} {speedup:>8}  "
                f"{row.key.label} / {config_text(row.config)}"
            )
        if any(r["interpret"] for r in table):
            click.echo("(interpreter sweeps: times are CPU wall clock, not GPU timings)")
    if png:
        click.echo(f"wrote {png}", err=as_json)  # on stderr with --json, which keeps stdout JSON


@click.command()
@db_option
@target_option("Only this target's sweeps (default: all).")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Markdown file to write, beside the tables: tuned_configs/sm90/SWEEP.md. Without it the page "
    "is printed.",
)
@json_option
@domain_errors
def summary(db_url: str, target: Any, out: Path | None, as_json: bool) -> None:
    """The sweep summary kept beside the tables: trials, failures by kind, time spent, per kernel."""
    from ..storage import Storage
    from ..summary import summary_markdown, sweep_summary, write_summary

    target_name = target.name if target else None
    storage = Storage(db_url, must_exist=True)
    data = write_summary(storage, out, target_name) if out else sweep_summary(storage, target_name)
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    elif out is None:
        click.echo(summary_markdown(data), nl=False)
    else:
        trials = sum(sum(k["trials"].values()) for k in data["kernels"].values())
        click.echo(
            f"wrote {out}: {len(data['sweeps'])} sweeps, {len(data['kernels'])} kernels, {trials} trials"
        )
