"""`gdn-tune targets`: the GPU targets the tuner knows."""

from __future__ import annotations

import json

import click

from gdn_kernels import TARGETS
from gdn_kernels.tuning import GpuTarget

from .options import TargetType, json_option


@click.command()
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
