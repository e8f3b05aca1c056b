"""`gdn-tune sweep`: a thin command over `gdn_tune.sweep.run.run_sweep`."""

from __future__ import annotations

import json
import shlex
import sys
from typing import Any

import click

from gdn_kernels import Workload

from ..strategies.tpe import TpeStrategy
from .options import (
    db_option,
    domain_errors,
    duration_option,
    extra_specs_option,
    json_option,
    kernels_option,
    preset_option,
    shapes_option,
    target_option,
)
from .progress import SweepProgressLine, busy_line, seconds_line

TPE_DEFAULT_TRIALS = TpeStrategy.options["trials"][1]


@click.command()
@target_option("Target to tune (gdn-tune targets), or 'auto' for the GPU present.", required=True, auto=True)
@preset_option("Shapes of a preset (default: 'default', every model; 'smoke' under --interpret).")
@shapes_option("A shape to tune (repeatable), instead of a preset.")
@kernels_option
@click.option("--strategy", type=click.Choice(["grid", "tpe"]), default="grid", show_default=True)
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    help=f"TPE: configs measured per problem, the default's included (default {TPE_DEFAULT_TRIALS}).",
)
@duration_option("--budget", "Stop asking for trials after this long (e.g. 20m); re-run to continue.")
@db_option
@click.option(
    "--workers",
    default="auto",
    show_default=True,
    help="Worker processes: N, or auto (one per visible GPU; CUDA_VISIBLE_DEVICES picks them).",
)
@click.option(
    "--interpret", is_flag=True, help="Run trials on the CPU under TRITON_INTERPRET=1 (pipeline check)."
)
@click.option(
    "--trial-timeout",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Seconds a trial may take before its worker is killed (default 180).",
)
@click.option(
    "--claim-grace",
    type=click.FloatRange(min=0.1),
    default=None,
    metavar="SECONDS",
    help="A problem whose process sent no heartbeat for this long goes to another process (default 60).",
)
@click.option(
    "--queue-depth",
    type=click.IntRange(min=1),
    default=None,
    help="Tasks each worker holds, the running one included (default 2: the next trial waits on the "
    "worker while this process records the last; 1: handed out only after it).",
)
@extra_specs_option
@json_option
@domain_errors
def sweep(
    target: Any,
    preset: str | None,
    shapes: tuple[Workload, ...],
    kernels: list[str] | None,
    strategy: str,
    trials: int | None,
    budget: float | None,
    db_url: str,
    workers: str,
    interpret: bool,
    trial_timeout: float | None,
    claim_grace: float | None,
    queue_depth: int | None,
    extra_specs: tuple[str, ...],
    as_json: bool,
) -> None:
    """Measure every kernel's candidate configs on the shapes of a preset and keep the winners.

    Each trial is checked against the float64 reference (twice, bitwise) before it is timed; configs
    that do not compile for the target are recorded infeasible and never launched. Trials are committed
    as they finish: the same command again continues a stopped sweep without measuring anything twice.
    The same command on other hosts, with the same PostgreSQL --db, joins the sweep and shares its work.
    """
    from ..storage import DEFAULT_CLAIM_GRACE_S
    from ..sweep.run import run_sweep
    from ..worker import DEFAULT_TRIAL_TIMEOUT_S, QUEUE_DEPTH

    if preset and shapes:
        raise ValueError("give --preset or --shape, not both")
    if workers == "auto":
        worker_count = None
    elif workers.isdigit() and int(workers) >= 1:
        worker_count = int(workers)
    else:
        raise ValueError(f"--workers must be a positive number or auto, got {workers!r}")
    progress = SweepProgressLine()
    try:
        summary = run_sweep(
            target,
            workloads=list(shapes) if shapes else None,
            preset=None if shapes else preset,
            kernels=kernels,
            strategy=strategy,
            trials=trials,
            budget_s=budget,
            db_url=db_url,
            workers=worker_count,
            interpret=interpret,
            progress=progress,
            extra_specs=extra_specs,
            trial_timeout_s=trial_timeout or DEFAULT_TRIAL_TIMEOUT_S,
            claim_grace_s=claim_grace or DEFAULT_CLAIM_GRACE_S,
            queue_depth=queue_depth or QUEUE_DEPTH,
            command=shlex.join(["gdn-tune", *sys.argv[1:]]),
        )
    finally:
        progress.close()
    if as_json:
        click.echo(json.dumps(summary.as_dict(), indent=2))
    else:
        t = summary.trials_this_run
        click.echo(
            f"sweep {summary.sweep_id} ({'resumed' if summary.resumed else 'new'}) on {summary.gpu_name} "
            f"for {summary.target}: {summary.status}. {summary.winners}/{summary.problems} problems have a "
            f"winner. This run: {sum(t.values())} trials ({', '.join(f'{n} {s}' for s, n in sorted(t.items())) or 'none'}), "
            f"{summary.skipped_already_done} already done; compile {summary.compile_wall_s:.1f} s, "
            f"measure {summary.measure_wall_s:.1f} s."
        )
        if summary.worker_seconds:
            click.echo(
                f"  workers' time: {seconds_line(summary.worker_seconds)}; "
                f"busy (of measure): {busy_line(summary.busy_share)}"
            )
            click.echo("  this process:  " + seconds_line(summary.sweep_seconds))
        for label in summary.no_correct_config:
            click.echo(f"  no correct config: {label}")
        for failure in summary.strategy_failures:
            click.echo(f"  warning: {failure}", err=True)
        if summary.stopped:
            click.echo(f"stopped ({summary.stopped}); run the same command to continue.")
    if summary.stopped == "interrupted":
        sys.exit(130)  # the shell's code for Ctrl-C, so scripts see the sweep did not finish
