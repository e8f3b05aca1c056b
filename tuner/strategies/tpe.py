"""Optuna's TPE sampler with a trial budget, for spaces too large to enumerate on every shape.

Each parameter is searched as the index into its sorted candidate values (an integer, so TPE sees that
BLOCK 256 lies between 128 and 512, which a categorical would hide). A sample that is not a feasible
candidate (a constraint fails, or it did not compile for the target) is told as infinitely slow, so TPE
learns to avoid it; a sample already measured is answered from what is known and never re-run.

The study of each problem lives in the sweep's database (Optuna's RDBStorage), named after the problem,
where optuna-dashboard shows it. The sampling itself runs on an in-memory study: through RDBStorage
one ask and tell cost 23 ms of SQLAlchemy work in the sweep's process (1.1 ms in memory), which at four
GPUs is most of that process's time between results. The in-memory study starts from every config the
sweep's trial table holds for the problem (it is the record a resumed or taken-over search continues
from), and each config measured is written to the database's study when the search finishes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

from gdn_kernels import Config

from .base import Problem, Search, Strategy

# What a failed or infeasible config tells the study: worse than every real time.
FAILED_MS = math.inf


class TpeSearch(Search):
    def __init__(self, problem: Problem, study: Any, settings: dict[str, Any], kept: Any = None) -> None:
        import optuna

        self._optuna = optuna
        self._study = study  # sampled from: in memory
        self._kept = kept  # the problem's study in the database (None: nothing kept)
        self._trials_budget = int(settings["trials"])
        self._patience = int(settings["patience"])
        self._candidates = set(problem.candidates)
        self._values = {
            name: sorted({c[name] for c in problem.candidates})
            for name, _ in (problem.candidates[0].params if problem.candidates else ())
        }
        # A parameter with one value is fixed; TPE only sees the others.
        self._distributions = {
            name: optuna.distributions.IntDistribution(0, len(values) - 1)
            for name, values in self._values.items()
            if len(values) > 1
        }
        self._measured: dict[Config, float | None] = dict(problem.measured)
        self._outstanding: dict[Config, Any] = {}
        self._repeats = 0  # consecutive samples that brought nothing new
        self._add_known_trials(self._study)

    def _decode(self, params: dict[str, int]) -> Config:
        return Config.of(
            **{
                name: values[params[name]] if name in self._distributions else values[0]
                for name, values in self._values.items()
            }
        )

    def _encode(self, config: Config) -> dict[str, int] | None:
        try:
            return {name: self._values[name].index(config[name]) for name in self._distributions}
        except (KeyError, ValueError):
            return None  # measured with a value outside today's candidates (e.g. the default)

    def _add_known_trials(self, study: Any) -> None:
        """Give `study` each measured config it lacks (from an earlier run, the default config)."""
        complete = self._optuna.trial.TrialState.COMPLETE
        in_study = {self._decode(t.params) for t in study.get_trials(deepcopy=False, states=(complete,))}
        new = []
        for config, time_ms in self._measured.items():
            params = self._encode(config)
            if config in in_study or params is None:
                continue
            value = FAILED_MS if time_ms is None else time_ms
            new.append(
                self._optuna.trial.create_trial(params=params, distributions=self._distributions, value=value)
            )
        study.add_trials(new)

    def finish(self) -> None:
        if self._kept is not None:
            self._add_known_trials(self._kept)

    def _finished(self) -> bool:
        measured_or_running = len(self._measured) + len(self._outstanding)
        tried_all = self._candidates <= set(self._measured) | set(self._outstanding)
        return measured_or_running >= self._trials_budget or tried_all or self._repeats >= self._patience

    def ask(self, n: int = 1) -> list[Config]:
        batch: list[Config] = []
        while len(batch) < n and not self._finished():
            trial = self._study.ask(self._distributions)
            config = self._decode(trial.params)
            if config in self._measured:
                known = self._measured[config]
                self._study.tell(trial, FAILED_MS if known is None else known)
                self._repeats += 1
            elif config not in self._candidates:
                self._study.tell(trial, FAILED_MS)
                self._repeats += 1
            elif config in self._outstanding:
                # Being measured right now: nothing to learn yet; the sample is dropped.
                self._study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
                self._repeats += 1
            else:
                self._outstanding[config] = trial
                batch.append(config)
                self._repeats = 0
        return batch

    def tell(self, config: Config, time_ms: float | None) -> None:
        trial = self._outstanding.pop(config)
        self._measured[config] = time_ms
        self._study.tell(trial, FAILED_MS if time_ms is None else time_ms)


class TpeStrategy(Strategy):
    name = "tpe"
    options: ClassVar[Mapping[str, tuple[str, Any]]] = {
        "trials": ("configs measured per problem, counting those measured before and the default", 32),
        "seed": ("seed of the TPE sampler, for a reproducible order of trials", 0),
        # Optuna's default is 10; most kernels here have 20 to 200 candidates, so 8 random configs
        # leave most of a 32-trial budget to the model.
        "startup_trials": ("random configs before TPE models the space", 8),
        "patience": ("consecutive samples of known configs after which the search has converged", 20),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        for name in ("trials", "startup_trials", "patience"):
            if int(self.settings[name]) < 1:
                raise ValueError(f"tpe option {name} must be at least 1, got {self.settings[name]!r}")
        self._storages: dict[str, Any] = {}

    def _storage(self, url: str | None) -> Any:
        import optuna

        if url is None or url in ("sqlite://", "sqlite:///:memory:"):
            return None  # Optuna's in-memory storage: a separate in-memory SQLite would be empty
        if url not in self._storages:
            from gdn_tune.migrations import optuna_schema_lock

            engine_kwargs = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {}
            with optuna_schema_lock(url):  # sweep processes on one PostgreSQL database start together
                self._storages[url] = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        return self._storages[url]

    def begin(self, problem: Problem) -> Search:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():
            # Both options have been "experimental" since Optuna 2.x; the warning says nothing new.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(
                seed=int(self.settings["seed"]),
                n_startup_trials=int(self.settings["startup_trials"]),
                multivariate=True,  # block size and warps interact: model them jointly
                constant_liar=True,  # configs in flight on other workers count as bad, so TPE spreads out
            )
        storage = self._storage(problem.storage_url)
        kept = None
        if storage is not None:
            kept = optuna.create_study(
                study_name=problem.name, storage=storage, direction="minimize", load_if_exists=True
            )
        study = optuna.create_study(study_name=problem.name, sampler=sampler, direction="minimize")
        return TpeSearch(problem, study, self.settings, kept)
