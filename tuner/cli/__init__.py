"""The `gdn-tune` command: a group of thin commands, each parsing its options and calling library
functions. Each command lives in the module of its subject (targets, tables, sweep, results, warmup);
what they share (options, error handling) is in `options.py`, the progress display in `progress.py`.
The command modules import `options.py`, never this package, so there is no import cycle; none imports
the database, torch or triton before its command runs (`gdn-tune --help` stays fast)."""

from __future__ import annotations

import click

from gdn_kernels import __version__

from .results import export, report, status, summary, trials
from .sweep import sweep
from .tables import check, diff, show
from .targets import targets
from .warmup import warmup

__all__ = ["main"]


@click.group()
@click.version_option(__version__, prog_name="gdn-tune")
def main() -> None:
    """Offline tuning for Gated Delta Net Triton kernels: sweep, store, export static config tables."""


for command in (targets, check, show, diff, sweep, export, status, trials, report, warmup, summary):
    main.add_command(command)
