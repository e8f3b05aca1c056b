"""Strategies against a recorded objective (no GPU): grid and TPE agree on the winner, TPE with fewer
trials; nothing is ever asked twice; measured configs are answered, not re-run; options checked by name."""

import math

import pytest

from gdn_kernels import Config
from gdn_kernels._spec import Constraint, Key, Param, SearchSpace, stages, warps
from gdn_tune.strategies import Problem, best_of, make_strategy, run_search

SPACE = SearchSpace(
    params=(
        Param("BLOCK", (64, 128, 256, 512, 1024, 2048, 4096)),
        warps(1, 2, 4, 8),
        stages(1, 2, 3),
    ),
    # Cuts 9 of the 84 combinations, so TPE meets samples that are not candidates.
    constraints=(
        Constraint("at most 32 elements per thread", lambda c, k: c["BLOCK"] <= 32 * 32 * c.num_warps),
    ),
)
CANDIDATES = tuple(SPACE.candidates(Key(())))


def _recorded_ms(config: Config) -> float | None:
    """A smooth landscape with one best config (BLOCK 512, 4 warps, 2 stages) and a few failures, as a
    sweep would have recorded it: ms per launch, None where the config was wrong."""
    if config["BLOCK"] == 4096 and config.num_stages == 3:
        return None
    block = abs(math.log2(config["BLOCK"]) - 9)
    warp = abs(math.log2(config.num_warps) - 2)
    return round(0.100 * (1 + 0.35 * block) * (1 + 0.25 * warp) * (1 + 0.08 * abs(config.num_stages - 2)), 6)


RECORDED = {c: _recorded_ms(c) for c in CANDIDATES}
BEST = Config.of(BLOCK=512, num_warps=4, num_stages=2)


def _counting(measured_log: list[Config]):
    def measure(config: Config) -> float | None:
        measured_log.append(config)
        return RECORDED[config]

    return measure


def test_the_recorded_space_is_as_described():
    assert len(CANDIDATES) == 75
    assert min((ms, c.label) for c, ms in RECORDED.items() if ms is not None)[1] == BEST.label


def test_grid_measures_every_candidate_once_in_order():
    log: list[Config] = []
    measured = run_search(make_strategy("grid").begin(Problem("grid", CANDIDATES)), _counting(log))
    assert log == list(CANDIDATES)
    assert best_of(measured) == BEST


def test_grid_skips_what_was_measured_before():
    before = {c: RECORDED[c] for c in CANDIDATES[:10]}
    log: list[Config] = []
    run_search(make_strategy("grid").begin(Problem("grid", CANDIDATES, before)), _counting(log))
    assert log == list(CANDIDATES[10:])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tpe_finds_the_grid_winner_with_fewer_trials(seed):
    grid_log: list[Config] = []
    grid_best = best_of(
        run_search(make_strategy("grid").begin(Problem("p", CANDIDATES)), _counting(grid_log))
    )
    tpe_log: list[Config] = []
    tpe = make_strategy("tpe", trials=40, seed=seed)
    tpe_best = best_of(run_search(tpe.begin(Problem(f"p{seed}", CANDIDATES)), _counting(tpe_log)))
    assert tpe_best == grid_best == BEST
    assert len(tpe_log) <= 40 < len(grid_log) == 75
    assert len(set(tpe_log)) == len(tpe_log), "TPE asked for a config twice"
    assert set(tpe_log) <= set(CANDIDATES), "TPE asked for a config that is not a candidate"


def test_tpe_asks_in_batches_without_duplicates_while_results_are_outstanding():
    search = make_strategy("tpe", trials=24, seed=3).begin(Problem("batch", CANDIDATES))
    asked: list[Config] = []
    while batch := search.ask(4):
        asked += batch
        for config in batch:
            search.tell(config, RECORDED[config])
    assert len(asked) == 24 and len(set(asked)) == 24


def test_a_resumed_tpe_study_continues_in_the_database_and_never_reruns(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first_log: list[Config] = []
    strategy = make_strategy("tpe", trials=12, seed=0)
    first = run_search(strategy.begin(Problem("resume", CANDIDATES, storage_url=url)), _counting(first_log))
    assert strategy.close() == []
    assert len(first_log) == 12
    # Same study, larger budget, what was measured handed back as a resumed sweep does.
    second_log: list[Config] = []
    strategy = make_strategy("tpe", trials=30, seed=0)
    run_search(strategy.begin(Problem("resume", CANDIDATES, first, url)), _counting(second_log))
    assert strategy.close() == []
    assert len(second_log) == 30 - 12
    assert not set(first_log) & set(second_log), "a config measured in the first run was measured again"

    import optuna

    study = optuna.load_study(study_name="resume", storage=url)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    # Each config measured, once, with its time: the study kept in the database is the record.
    assert len(complete) == len({tuple(sorted(t.params.items())) for t in complete}) == 30
    failed_as = math.inf  # a failed config is kept as infinitely slow
    expected = [failed_as if (ms := RECORDED[c]) is None else ms for c in {*first_log, *second_log}]
    assert sorted(t.value for t in complete) == sorted(expected)


def test_tpe_uses_configs_measured_outside_the_study_without_asking_for_them():
    measured = {BEST: RECORDED[BEST]}
    log: list[Config] = []
    run_search(
        make_strategy("tpe", trials=10, seed=0).begin(Problem("known", CANDIDATES, measured)), _counting(log)
    )
    assert BEST not in log and len(log) == 9  # the budget counts the known config


def test_unknown_strategy_and_unknown_options_are_rejected_by_name():
    with pytest.raises(ValueError, match=r"unknown strategy 'random'.*grid, tpe"):
        make_strategy("random")
    with pytest.raises(ValueError, match=r"'trials'.*options: none"):
        make_strategy("grid", trials=5)
    with pytest.raises(ValueError, match=r"'n_trials'.*options: trials, seed"):
        make_strategy("tpe", n_trials=5)
    with pytest.raises(ValueError, match="trials must be at least 1"):
        make_strategy("tpe", trials=0)


def test_a_study_that_cannot_be_kept_is_reported_and_the_search_still_ends(tmp_path):
    url = f"sqlite:///{tmp_path / 'missing' / 'study.db'}"  # a folder that does not exist
    log: list[Config] = []
    strategy = make_strategy("tpe", trials=6, seed=0)
    measured = run_search(strategy.begin(Problem("lost", CANDIDATES, storage_url=url)), _counting(log))
    assert len(measured) == len(log) == 6
    (failure,) = strategy.close()
    assert failure.startswith("study lost: ")


def test_tpe_asks_for_its_seeds_first_and_skips_those_it_cannot_or_need_not_measure():
    seeds = (
        CANDIDATES[40],
        CANDIDATES[3],
        CANDIDATES[40],
        BEST,
        Config.of(BLOCK=8192, num_warps=1, num_stages=1),
    )
    measured = {BEST: RECORDED[BEST]}  # already measured: not asked again
    search = make_strategy("tpe", trials=12, seed=0).begin(
        Problem("seeded", CANDIDATES, measured, seeds=seeds)
    )
    log: list[Config] = []
    run_search(search, _counting(log))
    # The two measurable seeds, once each and first; the duplicate, the measured one and the
    # config outside the candidates are dropped.
    assert log[:2] == [CANDIDATES[40], CANDIDATES[3]]
    assert log.count(CANDIDATES[40]) == 1 and BEST not in log and len(log) == 11
