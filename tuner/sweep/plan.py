"""Planning a sweep: its problems (one per kernel and distinct key of the workloads), what makes two
sweep commands the same work, and what a problem's search starts from."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gdn_kernels import Config, GpuTarget, KernelSpec, Key, Workload
from gdn_kernels.tuning import BUCKET_FIELDS, unique_keys

from ..storage import ProblemModel, Storage, TrialModel, key_to_json
from ..trial_result import TrialStatus


@dataclass
class Plan:
    spec: KernelSpec
    key: Key
    problem: ProblemModel | None = None
    trials: dict[Config, TrialModel] = field(default_factory=dict)
    feasible: list[Config] = field(default_factory=list)  # candidates that compiled, in space order
    default_feasible: bool = False
    new_trials: int = 0
    complete: bool = False  # searched to the end (not cut by the budget or Ctrl-C)
    stale_pick: bool = False  # taken over from a dead process, which may have measured after its pick

    @property
    def label(self) -> str:
        return f"{self.spec.name} {self.key.label}"

    @property
    def default(self) -> Config:
        """The default config of this key, one the space accepts (`KernelSpec.default_for`)."""
        return self.spec.default_for(self.key)


def plan_problems(specs: Sequence[KernelSpec], workloads: Sequence[Workload]) -> list[Plan]:
    """One plan per (kernel, distinct key) of the workloads whose phase the kernel serves."""
    plans = []
    for spec in specs:
        keys = unique_keys(spec.key_for(w) for w in workloads if w.phase in spec.phases)
        plans += [Plan(spec, key) for key in keys]
    return plans


def sweep_fingerprint(
    target: GpuTarget, gpu_name: str, interpret: bool, strategy: str, plans: Sequence[Plan]
) -> str:
    """What makes two sweep commands the same work: target and GPU, the Triton and CUDA that compile
    the kernels, the kernels (by source hash) and keys, the strategy. Strategy options (a larger
    --trials) and the budget are left out on purpose: re-running with more of either continues the
    same sweep."""
    problems = sorted((p.spec.name, p.spec.source_hash(), key_to_json(p.key)) for p in plans)
    versions = stack_versions()
    stack = [gpu_name, versions["triton_version"], versions["cuda_version"]]
    text = json.dumps([target.name, *stack, interpret, strategy, problems], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def stack_versions() -> dict[str, str | None]:
    """The Triton, torch and CUDA a sweep compiles and measures with."""
    import torch
    import triton

    return {
        "triton_version": triton.__version__,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
    }


# Winners of neighbouring buckets handed to a search as its first configs (see neighbour_seeds).
NEIGHBOUR_SEEDS = 2


def neighbour_seeds(
    storage: Storage, plans: Sequence[Plan], plan: Plan, limit: int = NEIGHBOUR_SEEDS
) -> tuple[Config, ...]:
    """The winners already found for the same kernel and shape at the nearest other token (or
    sequence) buckets, nearest first, at most `limit` distinct configs. The best config of a bucket is
    often its neighbour's: a sampling search that tries those first cannot miss them (the anchors
    sweep's chunk_state winner at 2/8 heads was never sampled by a 16-trial search that lacked it)."""

    def shape(p: Plan) -> tuple:
        return p.spec.name, tuple((k, v) for k, v in p.key.items if k not in BUCKET_FIELDS)

    def distance(p: Plan) -> float:
        return sum(
            abs(math.log2(max(1, int(v))) - math.log2(max(1, int(plan.key[k]))))
            for k, v in p.key.items
            if k in BUCKET_FIELDS
        )

    mine = shape(plan)
    near = sorted(
        (distance(p), p.problem.id)
        for p in plans
        if p is not plan and p.problem is not None and shape(p) == mine
    )
    winners = storage.winning_configs([problem_id for _, problem_id in near])
    seeds = dict.fromkeys(winners[problem_id] for _, problem_id in near if problem_id in winners)
    return tuple(seeds)[:limit]


def measured_times(plan: Plan) -> dict[Config, float | None]:
    return {c: (t.median_ms if t.status == TrialStatus.OK else None) for c, t in plan.trials.items()}


def planned_trials(plan: Plan, strategy: str, settings: Mapping[str, Any]) -> int:
    """Trials this run will measure for `plan` (for TPE an upper bound: it may converge sooner)."""
    todo = {c for c in plan.feasible if c not in plan.trials}
    if plan.default_feasible and plan.default not in plan.trials:
        todo.add(plan.default)  # measured first, whatever the strategy
    if strategy == "tpe":  # the budget counts everything measured, the default included
        measured = sum(t.status != TrialStatus.INFEASIBLE for t in plan.trials.values())
        return min(len(todo), max(0, int(settings["trials"]) - measured))
    return len(todo)
