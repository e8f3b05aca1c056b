"""`gdn-tune summary`: a thin command over summary.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from gdn_kernels.tuning import FileWriteError

from .cli import TargetType, json_option
from .cli_sweep import db_option


@click.command()
@db_option
@click.option("--gpu", "target", type=TargetType(), help="Only this target's sweeps (default: all).")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Markdown file to write, beside the tables: tuned_configs/sm90/SWEEP.md. Without it the page "
    "is printed.",
)
@json_option
def summary(db_url: str, target: Any, out: Path | None, as_json: bool) -> None:
    """The sweep summary kept beside the tables: trials, failures by kind, time spent, per kernel."""
    from .storage import Storage, StorageError
    from .summary import summary_markdown, sweep_summary, write_summary

    target_name = target.name if target else None
    try:
        storage = Storage(db_url, must_exist=True)
        data = write_summary(storage, out, target_name) if out else sweep_summary(storage, target_name)
    except (StorageError, FileWriteError) as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    elif out is None:
        click.echo(summary_markdown(data), nl=False)
    else:
        trials = sum(sum(k["trials"].values()) for k in data["kernels"].values())
        click.echo(
            f"wrote {out}: {len(data['sweeps'])} sweeps, {len(data['kernels'])} kernels, {trials} trials"
        )
