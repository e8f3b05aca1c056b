"""Measuring one trial (gdn_tune.measure): poisoned outputs catch an element a launch never wrote; times
are ordered."""

import _fake_kernels as fake

from gdn_kernels import Config
from gdn_tune.measure import ProblemBench, measure_trial
from gdn_tune.trial_result import TrialStatus


def test_measure_catches_an_unwritten_element_and_reports_times(device):
    key = fake.SPEC.key(T=100)
    bench = ProblemBench(fake.SPEC, key, device)
    ok = measure_trial(bench, Config.of(BLOCK=256, num_warps=1, num_stages=1))
    assert ok.status == TrialStatus.OK and 0 < ok.min_ms <= ok.median_ms <= ok.max_ms and ok.rel_error < 1e-6

    def skip_last(inputs, outputs, config):
        outputs["y"][:-1] = 2 * inputs["x"][:-1]  # the last element keeps its poison

    lazy = ProblemBench(
        fake.SPEC.__class__(**{**fake.SPEC.__dict__, "launch": skip_last, "_hash": []}), key, device
    )
    wrong = measure_trial(lazy, fake.SPEC.default)
    assert (
        wrong.status == TrialStatus.WRONG and "relative error inf" in wrong.error and wrong.median_ms is None
    )
