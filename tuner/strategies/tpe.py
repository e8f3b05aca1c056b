"""Optuna's TPE sampler with a trial budget, for spaces too large to enumerate on every shape.

Each parameter is searched as the index into its sorted candidate values (an integer, so TPE sees that
BLOCK 256 lies between 128 and 512, which a categorical would hide). A sample that is not a feasible
candidate (a constraint fails, or it did not compile for the target) is told as infinitely slow, so TPE
learns to avoid it; a sample already measured is answered from what is known and never re-run.

The study of each problem is kept in the sweep's database (Optuna's RDBStorage), named after the
problem, where optuna-dashboard shows it. The sampling itself runs on an in-memory study: through
RDBStorage one ask and tell cost 23 ms of SQLAlchemy work in the sweep's process (1.1 ms in memory), and
opening a study and adding a search's trials to it another 130 ms a problem, which at four GPUs is most
of that process's time between results. So the in-memory study starts from every config the sweep's
trial table holds for the problem (the record a resumed or taken-over search continues from), and when
the search finishes, a thread of its own writes the configs measured into the database's study.
"""

from __future__ import annotations

import math
import queue
import threading
import warnings
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from gdn_kernels import Config

from .base import Problem, Search, Strategy

# What a failed or infeasible config tells the study: worse than every real time.
FAILED_MS = math.inf


def _params_key(trial: Any) -> tuple:
    return tuple(sorted(trial.params.items()))


class _StudyKeeper:
    """Adds finished searches' trials to their studies in the database, on a thread of its own, so the
    sweep's loop never waits for it. A failure to keep a study loses nothing the sweep needs (its trial
    table is the record); it is reported when the keeper closes."""

    def __init__(self, storage_for: Callable[[str], Any]) -> None:
        self._storage_for = storage_for
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self.failures: list[str] = []

    def keep(self, url: str, name: str, trials: list[Any]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="gdn-tune-study-keeper", daemon=True)
            self._thread.start()
        self._queue.put((url, name, trials))

    def _serve(self) -> None:
        import optuna

        complete = (optuna.trial.TrialState.COMPLETE,)
        while (item := self._queue.get()) is not None:
            url, name, trials = item
            try:
                study = optuna.create_study(
                    study_name=name, storage=self._storage_for(url), direction="minimize", load_if_exists=True
                )
                known = {_params_key(t) for t in study.get_trials(deepcopy=False, states=complete)}
                study.add_trials([t for t in trials if _params_key(t) not in known])
            except Exception as e:  # the study is a copy: the sweep goes on without it
                self.failures.append(f"study {name}: {type(e).__name__}: {e}")

    def close(self, timeout_s: float) -> None:
        """Wait until every study handed over is written, or `timeout_s` has passed (a database that
        stopped answering): what is left unwritten then is counted in `failures`."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                left = self._queue.qsize()
                self.failures.append(f"{left + 1} studies or fewer not written within {timeout_s:g} s")
            self._thread = None


class TpeSearch(Search):
    def __init__(
        self,
        problem: Problem,
        study: Any,
        settings: dict[str, Any],
        keeper: _StudyKeeper | None = None,
    ) -> None:
        import optuna

        self._optuna = optuna
        self._study = study  # sampled from: in memory
        self._name = problem.name
        self._url = problem.storage_url
        self._keeper = keeper  # writes the study into the database when the search finishes
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
        self._study.add_trials(self._measured_trials())  # what an earlier run or the default measured
        for config in dict.fromkeys(problem.seeds):
            params = self._encode(config)
            if config in self._candidates and config not in self._measured and params is not None:
                self._study.enqueue_trial(params)  # the next asks return these first

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

    def _measured_trials(self) -> list[Any]:
        """One finished Optuna trial per measured config (those outside today's space left out)."""
        trials = []
        for config, time_ms in self._measured.items():
            params = self._encode(config)
            if params is not None:
                value = FAILED_MS if time_ms is None else time_ms
                trials.append(
                    self._optuna.trial.create_trial(
                        params=params, distributions=self._distributions, value=value
                    )
                )
        return trials

    def finish(self) -> None:
        if self._keeper is not None and self._url is not None:
            self._keeper.keep(self._url, self._name, self._measured_trials())

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
        self._keeper = _StudyKeeper(self._storage)

    def _storage(self, url: str) -> Any:
        import optuna

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
        study = optuna.create_study(study_name=problem.name, sampler=sampler, direction="minimize")
        # An in-memory SQLite database is private to its connection: a study there would be empty
        # to everyone else, so such a search keeps nothing.
        in_memory = problem.storage_url in (None, "sqlite://", "sqlite:///:memory:")
        return TpeSearch(problem, study, self.settings, None if in_memory else self._keeper)

    def close(self, timeout_s: float = 60.0) -> list[str]:
        self._keeper.close(timeout_s)
        failures, self._keeper.failures = self._keeper.failures, []
        return failures
