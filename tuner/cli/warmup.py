"""`gdn-tune warmup`: a thin command over warmup.py (plan the variants, compile them in parallel)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from gdn_kernels import Workload

from .options import domain_errors, json_option, kernels_option, shapes_option, target_option
from .progress import warmup_progress

# The options that make the one call profile of --preset/--shape (--model plans the serving calls).
PROFILE_FLAGS = ("varlen", "initial_state", "final_state", "qk_l2norm", "beta_dtype", "decode_state_cache")


@click.command()
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="NAME",
    help="A model the deployment serves (repeatable; an unknown name lists the known ones): its prefill and "
    "decode shapes at each --tp, called as serving engines call them (every row of warmup.SERVING_CALLS).",
)
@click.option(
    "--tp",
    "tps",
    multiple=True,
    type=int,
    metavar="N",
    help="With --model: the tensor-parallel degree it runs at (repeatable; default: 1, 2, 4 and 8).",
)
@click.option(
    "--preset",
    "presets",
    multiple=True,
    help="Shapes of a preset the deployment serves (repeatable; default: 'default', every model).",
)
@shapes_option("A shape to warm (repeatable), in addition to the presets.")
@kernels_option
@click.option("--jobs", type=click.IntRange(min=1), help="Compile processes (default: one per CPU core).")
@target_option(
    "Resolve tables and compile for the local GPU (auto), or for a named target (gdn-tune targets).",
    auto=True,
    default="auto",
)
@click.option(
    "--device-name",
    help="With a named --gpu: the GPU's name ('NVIDIA H200') to pick its device folder of the tables.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    help="Triton cache to fill (default: $TRITON_CACHE_DIR, else Triton's default).",
)
@click.option("--varlen/--no-varlen", default=True, show_default=True, help="Prefill passes cu_seqlens.")
@click.option(
    "--initial-state/--no-initial-state", default=True, show_default=True, help="Prefill passes a state."
)
@click.option(
    "--final-state/--no-final-state", default=True, show_default=True, help="Prefill: output_final_state."
)
@click.option("--qk-l2norm/--no-qk-l2norm", default=True, show_default=True, help="use_qk_l2norm_in_kernel.")
@click.option(
    "--beta-dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default="float32",
    show_default=True,
)
@click.option(
    "--decode-state-cache/--no-decode-state-cache",
    default=True,
    show_default=True,
    help="Decode updates a state cache in place through ssm_state_indices.",
)
@click.option(
    "--bundle",
    type=click.Path(file_okay=False),
    help="Also write the binaries and C launchers into this folder, for GDN_TUNE_BINARY_DIR: a folder a "
    "container image bakes in or a deployment ships (loaded only by the same Triton, GPU architecture "
    "and a compatible driver).",
)
@click.option("--dry-run", is_flag=True, help="Print the plan (keys, configs, variants); compile nothing.")
@json_option
@click.pass_context
@domain_errors
def warmup(
    ctx: click.Context,
    models: tuple[str, ...],
    tps: tuple[int, ...],
    presets: tuple[str, ...],
    shapes: tuple[Workload, ...],
    kernels: list[str] | None,
    jobs: int | None,
    target: Any,
    device_name: str | None,
    cache_dir: str | None,
    varlen: bool,
    initial_state: bool,
    final_state: bool,
    qk_l2norm: bool,
    beta_dtype: str,
    decode_state_cache: bool,
    bundle: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Compile the configs the tables give the GPU into Triton's cache, so a server's first call compiles nothing.

    The public functions run on meta tensors for every workload of the presets (every token count class
    Triton specialises on), their launches are recorded and deduplicated, and each variant is compiled
    through Triton's JIT warmup in worker processes. Run it with the server's environment (Triton's
    cache key includes its TRITON_* compiler variables) and the server's call profile (the flags below),
    or name the deployment (--model qwen3-next-80b-a3b --tp 4) to warm every call serving engines make.
    Serve with GDN_TUNE_COMPILE_GUARD=error to prove that nothing compiles after start-up.
    """
    from ..presets import TENSOR_PARALLEL, deployment_workloads, preset_by_name
    from ..sweep.target import local_place, target_place
    from ..warmup import SERVING_CALLS, CallProfile, plan_warmup, run_warmup

    if tps and not models:
        raise ValueError("--tp goes with --model")
    flags = [
        p for p in PROFILE_FLAGS if ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE
    ]
    if models and flags:
        raise ValueError(
            f"--model warms every call serving engines make (warmup.SERVING_CALLS); "
            f"{', '.join('--' + f.replace('_', '-') for f in flags)} go with --preset or --shape alone"
        )
    fallback = () if shapes or models else ("default",)
    workloads = [w for name in presets or fallback for w in preset_by_name(name).workloads]
    workloads += [w for m in models for tp in tps or TENSOR_PARALLEL for w in deployment_workloads(m, tp)]
    workloads += shapes
    if target == "auto":
        if device_name:
            raise ValueError("--device-name goes with a named --gpu; auto reads the local GPU's name")
        place, capability, described = local_place()
    else:
        place, capability, described = target_place(target, device_name)
    profile = CallProfile(
        varlen=varlen,
        initial_state=initial_state,
        output_final_state=final_state,
        qk_l2norm=qk_l2norm,
        beta_dtype=beta_dtype,
        decode_state_cache=decode_state_cache,
    )
    profiles = [p for _, p in SERVING_CALLS] if models else [profile]
    plan = plan_warmup(workloads, place, capability, described, kernels, profiles)
    for key in plan.unreached:
        click.echo(f"warning: no call of the plan resolved {key.kernel} {key.key.label}", err=True)
    if dry_run:
        _print_plan(plan, as_json)
        return
    progress = None if as_json else warmup_progress
    result = run_warmup(plan, jobs, cache_dir, progress, bundle)
    if as_json:
        click.echo(json.dumps({"plan": _plan_summary(plan), **result.as_dict()}, indent=2))
    else:
        counts = ", ".join(f"{n} {s}" for s, n in result.counts().items()) or "nothing to do"
        click.echo(
            f"warmup for {plan.target}: {len(plan.variants)} variants ({counts}) in {result.wall_seconds:.1f} s "
            f"with {result.jobs} jobs; {plan.calls} calls planned in {plan.plan_seconds:.1f} s. "
            f"Cache: {result.cache_dir}"
        )
        for failure in result.failed:
            click.echo(f"  failed: {failure.label}: {failure.error}")
        if result.bundle is not None:
            click.echo(
                f"  bundle: {bundle} ({result.bundle['variants']} binaries, {result.bundle['c_modules']} C "
                f"modules) for Triton {result.bundle['triton']}, compute capability {result.bundle['arch']}; "
                f"serve with GDN_TUNE_BINARY_DIR={bundle}"
            )
        for reason in result.launchers_missing():
            click.echo(
                f"  launchers {reason} (each new signature then builds its launcher at first launch, "
                "about 0.3 s; run the warmup where the GPU driver is installed)"
            )
    if result.failed:
        sys.exit(1)


def _plan_summary(plan: Any) -> dict[str, Any]:
    return {k: v for k, v in plan.as_dict().items() if k not in ("keys", "variants")} | {
        "keys": len(plan.keys),
        "variants": len(plan.variants),
        "unreached": [k.as_dict() for k in plan.unreached],
    }


def _print_plan(plan: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(plan.as_dict(), indent=2))
        return
    click.echo(
        f"plan for {plan.target} (compute capability {plan.capability}): {len(plan.workloads)} workloads, "
        f"{plan.calls} calls, {len(plan.keys)} keys, {len(plan.variants)} variants"
    )
    click.echo(f"{'kernel':<18} {'source':<9} {'config':<36} key")
    for k in plan.keys:
        click.echo(f"{k.kernel:<18} {k.source:<9} {k.config:<36} {k.key.label}")
    click.echo("variants:")
    for v in plan.variants:
        click.echo(f"  {v.kernel:<18} {v.label}")
