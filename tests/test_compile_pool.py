"""The compile pool: every job gets a result, and jobs that differ only in their bucket wait for the
first of them, so the others load its binary from Triton's cache instead of compiling it again."""

from gdn_kernels import Workload
from gdn_tune.compile import CompileJob, compile_all
from gdn_tune.specs import available_specs
from gdn_tune.sweep.plan import plan_problems


def test_jobs_alike_but_for_their_bucket_follow_the_first_one(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    spec = available_specs(())["gdn_gating"]
    plans = plan_problems([spec], [Workload(2, 4, 32, 32, tokens=n) for n in (64, 1000, 5000)])
    assert len(plans) == 3  # three buckets of one shape
    configs = spec.space.candidates(plans[0].key)[:2]
    jobs = [CompileJob(spec.name, p.key, c) for p in plans for c in configs]
    order: list[CompileJob] = []
    results = compile_all(jobs, "h200", processes=4, on_result=lambda job, _: order.append(job))
    assert set(results) == set(jobs) and all(r.ok for r in results.values())
    assert sorted(order, key=jobs.index) == jobs and len(order) == len(jobs)
    for config in configs:
        first = order.index(CompileJob(spec.name, plans[0].key, config))
        for plan in plans[1:]:
            assert order.index(CompileJob(spec.name, plan.key, config)) > first
