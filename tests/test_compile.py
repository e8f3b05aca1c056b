"""Compiling for a target (gdn_tune.compile), with no GPU: the compile check reports compile errors and
the shared memory of the launch as a GPU specialises it; the compile pool gives every job a result, and
jobs that differ only in their bucket wait for the first of them, so the others load its binary from
Triton's cache instead of compiling it again."""

from _rowsum import ROWSUM, rowsum_key

from gdn_kernels import Config, Workload
from gdn_kernels._targets import TARGETS, GpuTarget
from gdn_tune.compile import CompileJob, compile_all, compile_check
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


def test_compile_check_reports_compile_errors_and_shared_memory():
    key = rowsum_key(64)
    h200 = TARGETS["h200"]
    fits = compile_check(ROWSUM, key, Config.of(BLOCK=64, num_warps=4, num_stages=1), h200)
    assert fits.ok and fits.error is None and fits.shared_bytes is not None and fits.shared_bytes > 0
    tiny = GpuTarget("tiny", "sm90", (9, 0), fits.shared_bytes - 1, 1, "tiny")
    too_big = compile_check(ROWSUM, key, Config.of(BLOCK=64, num_warps=4, num_stages=1), tiny)
    assert not too_big.ok and "shared memory" in too_big.error
    broken = compile_check(ROWSUM, key, Config.of(BLOCK=96, num_warps=4, num_stages=1), h200)
    assert not broken.ok and "does not compile" in broken.error and "power of 2" in broken.error
    invalid = compile_check(ROWSUM, key, Config.of(BLOCK=64, num_warps=3, num_stages=1), h200)
    assert not invalid.ok and "num_warps" in invalid.error


def test_compile_check_sees_the_shared_memory_of_the_launch_as_specialised():
    """On an H200 this config failed at launch (OutOfResources: Required 246540, limit 232448) after
    passing the check, which compiled without Triton's argument specialisation (66316 bytes then) and,
    under the interpreter, with INTERPRETED=True (65536 bytes)."""
    from gdn_kernels.chunk_state import SPEC as CHUNK_STATE

    key = CHUNK_STATE.key(
        dtype="bfloat16", H=16, HV=64, K=128, V=128, T=8192, N=1, state_dtype="float32", state_layout="kv"
    )
    config = Config.of(BV=128, num_warps=8, num_stages=4)
    result = compile_check(CHUNK_STATE, key, config, TARGETS["h200"])
    assert not result.ok and result.shared_bytes == 246540
    assert result.error == "needs 246540 bytes of shared memory, h200 has 232448"
