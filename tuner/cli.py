"""The `gdn-tune` command. Commands are thin: each parses options and calls library functions."""

from __future__ import annotations

import json
from typing import Any

import click

from gdn_kernels import TARGETS, __version__, target_by_name
from gdn_kernels.tuning import GpuTarget, UnknownTargetError


class TargetType(click.ParamType):
    """A GPU target by name (or, with `auto`, the word "auto": the GPU present); an unknown name is a
    usage error (exit 2) listing the known ones, in every command that takes one."""

    name = "gpu"

    def __init__(self, auto: bool = False) -> None:
        self.auto = auto

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, GpuTarget):
            return value
        if self.auto and value.lower() == "auto":
            return "auto"
        try:
            return target_by_name(value)
        except UnknownTargetError as e:
            self.fail(f"{e}{', or auto' if self.auto else ''}", param, ctx)


def preset_option(help_text: str) -> Any:
    """`--preset NAME`, one of the presets (listed in --help; another name is a usage error, exit 2)."""
    from gdn_tune.presets import PRESETS

    return click.option("--preset", type=click.Choice(list(PRESETS)), help=help_text)


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


@click.group()
@click.version_option(__version__, prog_name="gdn-tune")
def main() -> None:
    """Offline tuning for Gated Delta Net Triton kernels: sweep, store, export static config tables."""


@main.command()
@click.argument("names", nargs=-1, type=TargetType())
@json_option
def targets(names: tuple[GpuTarget, ...], as_json: bool) -> None:
    """List the GPU targets the tuner knows (or only NAMES), with whether tables ship for each."""
    from gdn_kernels.tuning import shipped_archs

    shipped = shipped_archs()
    rows = [
        {
            "name": t.name,
            "arch": t.arch,
            "compute_capability": f"{t.capability[0]}.{t.capability[1]}",
            "shared_memory_per_block": t.shared_memory_per_block,
            "sm_count": t.sm_count,
            "tables_shipped": t.arch in shipped,
        }
        for t in (names or TARGETS.values())
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    header = f"{'name':<9} {'arch':<6} {'cc':<5} {'smem/block':>11} {'SMs':>4}  tables"
    click.echo(header)
    for r in rows:
        smem = f"{r['shared_memory_per_block'] // 1024} KiB"
        shipped_text = "shipped" if r["tables_shipped"] else "none (defaults)"
        click.echo(
            f"{r['name']:<9} {r['arch']:<6} {r['compute_capability']:<5} {smem:>11} {r['sm_count']:>4}  {shipped_text}"
        )


from gdn_tune.cli_tables import check, diff, show  # noqa: E402  (commands defined in their own module)

main.add_command(check)
main.add_command(show)
main.add_command(diff)

from gdn_tune.cli_sweep import export, report, status, sweep, trials  # noqa: E402  (sweep and its database)

main.add_command(sweep)
main.add_command(export)
main.add_command(status)
main.add_command(trials)
main.add_command(report)

from gdn_tune.cli_warmup import warmup  # noqa: E402  (compiles the shipped configs into Triton's cache)

main.add_command(warmup)

from gdn_tune.cli_summary import summary  # noqa: E402  (the sweep summary kept beside the tables)

main.add_command(summary)
