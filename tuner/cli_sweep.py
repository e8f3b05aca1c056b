"""`gdn-tune sweep`, `export`, `status`, `trials` and `report`: thin commands over sweep.py, export.py
and results.py. Each parses its options, calls one library function and prints."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from gdn_kernels import Workload
from gdn_kernels.tuning import FileWriteError, replaced_atomically

from .cli import TargetType, json_option, preset_option
from .constants import DEFAULT_DB_URL, TRIAL_COLUMNS
from .strategies.tpe import TpeStrategy

TPE_DEFAULT_TRIALS = TpeStrategy.options["trials"][1]

db_option = click.option(
    "--db",
    "db_url",
    default=DEFAULT_DB_URL,
    show_default=True,
    envvar="GDN_TUNE_DB",
    help="SQLAlchemy URL of the sweep database (also $GDN_TUNE_DB), e.g. postgresql://user@host/gdn "
    "(needs the postgres extra: pip install 'gdn-tune[postgres]').",
)
extra_specs_option = click.option(
    "--extra-specs",
    multiple=True,
    metavar="MODULE:ATTR",
    help="Also tune the KernelSpec(s) at this import path (repeatable; also $GDN_TUNE_EXTRA_SPECS).",
)

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([hms])")


def parse_duration(text: str) -> float:
    """Seconds in '90', '90s', '20m', '1h30m'."""
    text = text.strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 20m, 1h30m)")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


_SHAPE_FIELDS = {"H", "HV", "K", "V", "T", "N", "dtype", "phase", "state_dtype", "state_layout"}
_PHASES = ("prefill", "decode", "decode_gated", "decode_packed", "spec_decode")


def parse_shape(text: str) -> Workload:
    """A workload from 'H=16,HV=32,K=128,V=128,T=8192[,N=1][,phase=decode][,dtype=bfloat16]
    [,state_dtype=bfloat16][,state_layout=vk]'."""
    fields: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name not in _SHAPE_FIELDS:
            raise ValueError(
                f"--shape {text!r}: {part!r} is not one of {', '.join(sorted(_SHAPE_FIELDS))}=VALUE"
            )
        fields[name] = value
    missing = [f for f in ("H", "HV", "K", "V", "T") if f not in fields]
    if missing:
        raise ValueError(f"--shape {text!r}: missing {', '.join(missing)}")
    try:
        numbers = {f: int(fields[f]) for f in ("H", "HV", "K", "V", "T")}
        sequences = int(fields.get("N", "1"))
    except ValueError as e:
        raise ValueError(f"--shape {text!r}: H, HV, K, V, T and N must be integers ({e})") from None
    phase = fields.get("phase", "prefill")
    if phase not in _PHASES:
        raise ValueError(f"--shape {text!r}: phase must be one of {', '.join(_PHASES)}, got {phase!r}")
    state = (fields.get("state_dtype", "float32"), fields.get("state_layout", "kv"))
    if state[0] not in ("float32", "bfloat16", "float16") or state[1] not in ("kv", "vk"):
        raise ValueError(
            f"--shape {text!r}: state_dtype must be float32/bfloat16/float16, state_layout kv/vk"
        )
    if min(*numbers.values(), sequences) < 1 or numbers["HV"] % numbers["H"]:
        raise ValueError(f"--shape {text!r}: sizes must be positive and HV a multiple of H")
    return Workload(
        numbers["H"],
        numbers["HV"],
        numbers["K"],
        numbers["V"],
        tokens=numbers["T"],
        sequences=sequences,
        dtype=fields.get("dtype", "bfloat16"),
        phase=phase,
        state_dtype=state[0],
        state_layout=state[1],
    )


def _format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )


class _ProgressLine:
    """One line on stderr, redrawn in place on a terminal, printed every few seconds otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last_print = -1e9
        self.last_len = 0

    def __call__(self, p: Any) -> None:
        if p.phase == "compile":
            text = f"compile: {p.label}, {p.infeasible} infeasible"
        else:
            left = f", ~{_format_seconds(p.eta_s)} left" if p.eta_s is not None else ""
            text = (
                f"[{p.problem}/{p.problems}] {p.done}/{p.planned} trials: {p.ok} ok, {p.failed} failed, "
                f"{p.infeasible} infeasible{left} | {p.label}"
            )
        if self.tty:
            click.echo("\r" + text.ljust(self.last_len)[:200], nl=False, err=True)
            self.last_len = len(text)
        elif p.elapsed_s - self.last_print >= 5 or (p.phase != "compile" and p.done == p.planned):
            click.echo(text, err=True)
            self.last_print = p.elapsed_s

    def close(self) -> None:
        if self.tty and self.last_len:
            click.echo(err=True)


@click.command()
@click.option(
    "--gpu",
    "gpu",
    required=True,
    type=TargetType(auto=True),
    help="Target to tune (gdn-tune targets), or 'auto' for the GPU present.",
)
@preset_option("Shapes of a preset (default: 'default', every model; 'smoke' under --interpret).")
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    metavar="H=..,HV=..,K=..,V=..,T=..[,N=..][,phase=decode][,dtype=..]",
    help="A shape to tune (repeatable), instead of a preset.",
)
@click.option("--kernels", help="Comma-separated kernel names (default: all).")
@click.option("--strategy", type=click.Choice(["grid", "tpe"]), default="grid", show_default=True)
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    help=f"TPE: configs measured per problem, the default's included (default {TPE_DEFAULT_TRIALS}).",
)
@click.option("--budget", help="Stop asking for trials after this long (e.g. 20m); re-run to continue.")
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
@extra_specs_option
@json_option
def sweep(
    gpu: Any,
    preset: str | None,
    shapes: tuple[str, ...],
    kernels: str | None,
    strategy: str,
    trials: int | None,
    budget: str | None,
    db_url: str,
    workers: str,
    interpret: bool,
    trial_timeout: float | None,
    claim_grace: float | None,
    extra_specs: tuple[str, ...],
    as_json: bool,
) -> None:
    """Measure every kernel's candidate configs on the shapes of a preset and keep the winners.

    Each trial is checked against the float64 reference (twice, bitwise) before it is timed; configs
    that do not compile for the target are recorded infeasible and never launched. Trials are committed
    as they finish: the same command again continues a stopped sweep without measuring anything twice.
    The same command on other hosts, with the same PostgreSQL --db, joins the sweep and shares its work.
    """
    from .storage import DEFAULT_CLAIM_GRACE_S, StorageError
    from .sweep import GpuMismatchError, run_sweep
    from .worker import DEFAULT_TRIAL_TIMEOUT_S

    try:
        if preset and shapes:
            raise ValueError("give --preset or --shape, not both")
        workloads = [parse_shape(s) for s in shapes] if shapes else None
        if workers == "auto":
            worker_count = None
        elif workers.isdigit() and int(workers) >= 1:
            worker_count = int(workers)
        else:
            raise ValueError(f"--workers must be a positive number or auto, got {workers!r}")
        progress = _ProgressLine()
        try:
            summary = run_sweep(
                gpu,
                workloads=workloads,
                preset=None if shapes else preset,
                kernels=[k.strip() for k in kernels.split(",") if k.strip()] if kernels else None,
                strategy=strategy,
                trials=trials,
                budget_s=parse_duration(budget) if budget else None,
                db_url=db_url,
                workers=worker_count,
                interpret=interpret,
                progress=progress,
                extra_specs=extra_specs,
                trial_timeout_s=trial_timeout or DEFAULT_TRIAL_TIMEOUT_S,
                claim_grace_s=claim_grace or DEFAULT_CLAIM_GRACE_S,
                command=shlex.join(["gdn-tune", *sys.argv[1:]]),
            )
        finally:
            progress.close()
    except (ValueError, GpuMismatchError, StorageError) as e:
        raise click.ClickException(str(e)) from e
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
            click.echo("  workers' time: " + _seconds_line(summary.worker_seconds))
            click.echo("  this process:  " + _seconds_line(summary.sweep_seconds))
        for label in summary.no_correct_config:
            click.echo(f"  no correct config: {label}")
        for failure in summary.strategy_failures:
            click.echo(f"  warning: {failure}", err=True)
        if summary.stopped:
            click.echo(f"stopped ({summary.stopped}); run the same command to continue.")
    if summary.stopped == "interrupted":
        sys.exit(130)  # the shell's code for Ctrl-C, so scripts see the sweep did not finish


@click.command()
@click.option("--gpu", "target", required=True, type=TargetType(), help="Target whose sweeps to export.")
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
    from .export import ExportRefused, export_tables
    from .results import UnknownSweepError
    from .storage import StorageError

    try:
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
    except (ExportRefused, UnknownSweepError) as e:
        raise click.UsageError(str(e)) from None
    except (ValueError, StorageError, FileWriteError) as e:
        raise click.ClickException(str(e)) from e
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
def status(db_url: str, as_json: bool) -> None:
    """Sweeps in the database and their progress."""
    from .results import sweep_rows
    from .storage import Storage, StorageError

    try:
        rows = sweep_rows(Storage(db_url, must_exist=True))
    except StorageError as e:
        raise click.ClickException(str(e)) from e
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
def trials(path: str, sweep_id: int | None, db_url: str) -> None:
    from .results import UnknownSweepError, write_trials_parquet
    from .storage import Storage, StorageError

    try:
        count = write_trials_parquet(Storage(db_url, must_exist=True), path, sweep_id)
    except UnknownSweepError as e:
        raise click.UsageError(str(e)) from None
    except (StorageError, FileWriteError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"wrote {count} trials to {path}")


@click.command()
@click.option("--gpu", "target", type=TargetType(), help="Only this target's sweeps.")
@db_option
@click.option(
    "--png",
    type=click.Path(dir_okay=False),
    help="Also plot the speedups to this PNG (needs matplotlib, which gdn-tune does not depend on).",
)
@json_option
def report(target: Any, db_url: str, png: str | None, as_json: bool) -> None:
    """Per kernel and shape: the winner, its time, the default's, and the speedup over the default."""
    from .results import config_text, winners
    from .storage import Storage, StorageError

    pyplot = _pyplot() if png else None  # before any output: a missing matplotlib fails first
    try:
        rows = winners(Storage(db_url, must_exist=True), target.name if target else None)
    except StorageError as e:
        raise click.ClickException(str(e)) from e
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
    if pyplot is not None and png is not None:
        # Written before the table is printed, so an unwritable path fails with nothing printed.
        try:
            _plot_speedups(pyplot, table, Path(png))
        except FileWriteError as e:
            raise click.ClickException(str(e)) from e
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


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise click.ClickException(
            "--png needs matplotlib, which gdn-tune does not depend on: pip install matplotlib"
        ) from None
    return plt


def _plot_speedups(plt: Any, table: list[dict[str, Any]], path: Path) -> None:
    """One bar per winner: its speedup over the default config; the line at 1× is the default."""
    rows = [r for r in table if r["speedup"] is not None]
    fig, ax = plt.subplots(figsize=(10, max(2.0, 0.25 * len(rows) + 1)))
    labels = [f"{r['kernel']} " + "-".join(f"{k}={v}" for k, v in r["key"].items()) for r in rows]
    ax.barh(labels, [r["speedup"] for r in rows])
    ax.axvline(1.0, color="black", linewidth=0.8)
    measured = sorted({f"{r['target']} ({r['gpu_name']})" for r in table})
    timing = ", CPU wall clock of the interpreter" if any(r["interpret"] for r in table) else ""
    ax.set_title(f"gdn-tune report: {', '.join(measured) or 'no winners'}{timing}")
    ax.set_xlabel("speedup over the default config (× = default's time / winner's time, each re-timed)")
    fig.tight_layout()
    with replaced_atomically(path) as temp:
        fig.savefig(temp, dpi=120, format="png")  # the temporary name has no .png to go by
    plt.close(fig)


def _seconds_line(seconds: dict[str, float]) -> str:
    """ "load 12.3 s (41 %), check ..." with the share of the total, largest first."""
    total = sum(seconds.values()) or 1.0
    parts = sorted(seconds.items(), key=lambda item: -item[1])
    return ", ".join(f"{name} {s:.1f} s ({100 * s / total:.0f} %)" for name, s in parts)
