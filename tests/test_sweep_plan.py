"""Planning a sweep (gdn_tune.sweep.plan): the seeds a search starts from are the winners of the nearest
buckets."""

from gdn_kernels import Workload, kernel_specs
from gdn_tune.trial_result import TrialStatus

GATING = kernel_specs()["gdn_gating"]


def test_neighbour_seeds_are_the_winners_of_the_nearest_buckets_of_the_same_shape(tmp_path):
    from gdn_tune.storage import Storage
    from gdn_tune.sweep.plan import neighbour_seeds, plan_problems
    from gdn_tune.trial_result import Measurement

    storage = Storage(f"sqlite:///{tmp_path / 'seeds.db'}")
    sweep, _ = storage.open_sweep(
        "s" * 64, target="h200", gpu_name="NVIDIA H200", compute_capability="9.0", triton_version="3.6.0",
        torch_version="2.13.0", cuda_version="12.8", interpret=False, strategy="tpe", command="test",
    )  # fmt: skip
    shapes = [Workload(2, 4, 32, 32, tokens=n) for n in (64, 256, 1024, 4096)] + [
        Workload(2, 8, 32, 32, tokens=256)
    ]
    plans = plan_problems([GATING], shapes)
    configs = GATING.space.candidates(plans[0].key)
    for plan in plans:
        plan.problem = storage.ensure_problem(sweep.id, GATING.name, plan.key, "h", GATING.default)
    by_tokens = {(p.key["HV"], p.key["T"]): p for p in plans}
    wins = {(4, 64): configs[0], (4, 1024): configs[1], (4, 4096): configs[2], (8, 256): configs[3]}
    for shape, config in wins.items():
        problem = by_tokens[shape].problem
        trial = storage.record_trial(problem.id, config, Measurement(TrialStatus.OK, median_ms=0.1))
        storage.set_winner(problem.id, trial.id, 0.1, None)
    # T=256: its neighbours 64 and 1024 are two buckets away (log2), 4096 four; HV=8 is another shape.
    assert neighbour_seeds(storage, plans, by_tokens[(4, 256)]) == (configs[0], configs[1])
    assert neighbour_seeds(storage, plans, by_tokens[(4, 256)], limit=5) == (
        configs[0],
        configs[1],
        configs[2],
    )
    assert neighbour_seeds(storage, plans, by_tokens[(8, 256)]) == ()
