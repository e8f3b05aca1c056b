"""One trial: is the config right, then how fast is it. Runs inside a worker process (see worker.py).

Correctness comes first and decides alone whether a config may ever win: outputs are poisoned with NaN
(an element the kernel forgets to write fails the check), the kernel runs, its outputs are compared with
the spec's float64 reference by relative L2 error (≤ spec.tolerance), and it runs a second time into
freshly poisoned outputs that must be bitwise identical to the first (a race shows up as a difference).

Timing on CUDA follows the shape of triton.testing.do_bench_cudagraph, written for this use: the launches
over several copies of the inputs are captured in one CUDA graph, so launch overhead is out of the
measurement; copies are added until together they exceed twice the L2 cache, so each launch reads its
inputs from HBM as a real layer does, not from a cache its predecessor warmed; each repetition is one
graph replay between two CUDA events; the repetitions run for a time budget and the median is the figure.
Under the interpreter the "timing" is the wall clock of the CPU run: meaningless as speed, but it
exercises the whole pipeline.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from gdn_kernels import Config, KernelSpec, Key
from gdn_kernels.tuning import compare_outputs

from .trial_result import Measurement, TrialStatus

# Time budget of one trial's repetitions. Triton's do_bench uses 100 ms; a kernel here runs 5 µs to
# 4 ms, so 100 ms is 25 to 20 000 replays, enough for a median stable to well under 1 %.
CUDA_BUDGET_MS = 100.0
CUDA_MIN_REPETITIONS = 10
CUDA_MAX_REPETITIONS = 1000
# Copies of the inputs until they exceed this many times the L2 cache (60 MiB on an H200): the first
# copy's lines are evicted by the time the graph comes back to it.
L2_MULTIPLE = 2
# Cap on copies: a decode problem of one sequence is ~1 MB, so 256 copies already reach 256 MB; past
# that the launches of one replay would only make the graph larger.
MAX_INPUT_COPIES = 256
# Under the interpreter one launch of a smoke shape takes ~30 ms; 3 repetitions show the pipeline
# works without making the CPU test suite slow.
INTERPRET_REPETITIONS = 3
# Interleaved re-timing of the top candidates: rounds of one replay of each, in rotating order.
RETIME_ROUNDS_CUDA = 50
RETIME_ROUNDS_INTERPRET = 2


@dataclass(frozen=True)
class Timing:
    median_ms: float
    min_ms: float
    max_ms: float
    spread_ms: float  # interquartile range, p75 − p25
    repetitions: int

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> Timing:
        ordered = sorted(samples_ms)
        if len(ordered) >= 4:
            q1, _, q3 = statistics.quantiles(ordered, n=4)
        else:
            q1, q3 = ordered[0], ordered[-1]
        return cls(statistics.median(ordered), ordered[0], ordered[-1], q3 - q1, len(ordered))


@contextlib.contextmanager
def charged(seconds: Counter[str], name: str, settle: Callable[[], None] | None = None) -> Iterator[None]:
    """Add the wall time of the block to `seconds[name]`; `settle` ends the block's work first (a GPU
    synchronisation), except after an error, which it would replace with its own."""
    start = time.perf_counter()
    try:
        yield
        if settle is not None:
            settle()
    finally:
        seconds[name] += time.perf_counter() - start


def _poisoned(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fill outputs with values no kernel writes: NaN for floats, the largest value for integers."""
    for tensor in outputs.values():
        if tensor.is_floating_point():
            tensor.fill_(math.nan)
        elif tensor.dtype != torch.bool:
            tensor.fill_(torch.iinfo(tensor.dtype).max)
    return outputs


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def _copy_inputs(inputs: dict) -> dict:
    # Same values at new addresses: what matters for the cache is where a launch reads, not what.
    return {name: v.clone() if isinstance(v, torch.Tensor) else v for name, v in inputs.items()}


def _tensor_bytes(tensors: dict) -> int:
    return sum(v.numel() * v.element_size() for v in tensors.values() if isinstance(v, torch.Tensor))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ProblemBench:
    """Inputs, reference and timing copies of one problem on one device, shared by its trials."""

    def __init__(self, spec: KernelSpec, key: Key, device: torch.device | str, seed: int = 0) -> None:
        self.spec = spec
        self.key = key
        self.device = torch.device(device)
        # Where this bench's wall time went, by phase: the sweep reports it, so a slow sweep says why.
        self.seconds: Counter[str] = Counter()
        with self.phase("setup"):
            self.inputs = spec.make_inputs(key, self.device, seed)
            with torch.no_grad():
                self.reference = spec.reference(self.inputs)
        self._copies: list[tuple[dict, dict]] | None = None
        self._loaded: set[Config] = set()

    def phase(self, name: str) -> contextlib.AbstractContextManager[None]:
        """Charge the wall time of the block, up to the GPU's completion of its work, to `name`."""
        return charged(self.seconds, name, lambda: _synchronize(self.device))

    def take_seconds(self) -> dict[str, float]:
        """The time by phase since the last call."""
        taken = dict(self.seconds)
        self.seconds.clear()
        return taken

    def load(self, config: Config) -> None:
        """Launch `config` once so its kernels are compiled or loaded from Triton's cache: the first
        launch of a config in a process costs that, and it is charged to "load", not to the check."""
        if config in self._loaded:
            return
        with self.phase("load"):
            self.spec.launch(self.inputs, self.spec.make_outputs(self.inputs), config)
        self._loaded.add(config)

    # Correctness -------------------------------------------------------------------------------
    def _run_poisoned(self, config: Config) -> dict[str, torch.Tensor]:
        outputs = _poisoned(self.spec.make_outputs(self.inputs))
        self.spec.launch(self.inputs, outputs, config)
        _synchronize(self.device)
        return outputs

    def check(self, config: Config) -> tuple[float, str | None]:
        """The worst relative error of `config`'s outputs, and why it is wrong (None when it is right
        and deterministic)."""
        first = self._run_poisoned(config)
        errors = compare_outputs(first, self.reference)
        worst_name = max(errors, key=lambda n: errors[n])
        worst = errors[worst_name]
        if not worst <= self.spec.tolerance:  # also catches NaN and inf (an unwritten element)
            return (
                worst,
                f"output {worst_name}: relative error {worst:.3g} > tolerance {self.spec.tolerance:g}",
            )
        second = self._run_poisoned(config)
        for name in self.reference:
            if not _bitwise_equal(first[name], second[name]):
                return worst, f"output {name} differs bitwise between two runs (a race or uninitialised read)"
        return worst, None

    # Timing ------------------------------------------------------------------------------------
    def _input_copies(self) -> list[tuple[dict, dict]]:
        if self._copies is None:
            with self.phase("setup"):
                self._copies = self._make_copies()
        return self._copies

    def _make_copies(self) -> list[tuple[dict, dict]]:
        copies = [(self.inputs, self.spec.make_outputs(self.inputs))]
        if self.device.type == "cuda":
            l2_bytes = torch.cuda.get_device_properties(self.device).L2_cache_size
            per_copy = max(1, _tensor_bytes(copies[0][0]) + _tensor_bytes(copies[0][1]))
            wanted = min(MAX_INPUT_COPIES, math.ceil(L2_MULTIPLE * l2_bytes / per_copy))
            while len(copies) < wanted:
                inputs = _copy_inputs(self.inputs)
                copies.append((inputs, self.spec.make_outputs(inputs)))
        return copies

    def _launch_all(self, config: Config) -> Callable[[], None]:
        copies = self._input_copies()

        def run() -> None:
            for inputs, outputs in copies:
                self.spec.launch(inputs, outputs, config)

        return run

    def _replayable(self, config: Config) -> Callable[[], None]:
        """One call launches the kernel once per input copy: a CUDA graph replay when capture works."""
        run = self._launch_all(config)
        if self.device.type != "cuda":
            return run
        run()  # compiles on first use, outside the capture
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                run()
        except RuntimeError:
            # A launcher that cannot be captured (a host sync inside it) is timed eagerly: launch
            # overhead then counts, as it would in serving without graphs.
            torch.cuda.synchronize(self.device)
            return run
        return graph.replay

    def _per_launch_ms(self, replay: Callable[[], None], repetitions: int) -> list[float]:
        launches = len(self._input_copies())
        if self.device.type != "cuda":
            samples = []
            for _ in range(repetitions):
                start = time.perf_counter()
                replay()
                samples.append((time.perf_counter() - start) * 1e3 / launches)
            return samples
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(repetitions)
        ]
        for start_event, end_event in events:
            start_event.record()
            replay()
            end_event.record()
        torch.cuda.synchronize(self.device)
        return [s.elapsed_time(e) / launches for s, e in events]

    def time(self, config: Config, budget_ms: float = CUDA_BUDGET_MS) -> Timing:
        """Per-launch time of `config`: median over repetitions that fill `budget_ms`."""
        self._input_copies()  # made once per problem, charged to "setup"
        with self.phase("capture"):
            replay = self._replayable(config)
        with self.phase("timing"):
            if self.device.type != "cuda":
                replay()  # first run pays the interpreter's set-up
                return Timing.of(self._per_launch_ms(replay, INTERPRET_REPETITIONS))
            estimate_ms = statistics.median(self._per_launch_ms(replay, 3)) * len(self._input_copies())
            repetitions = int(budget_ms / max(estimate_ms, 1e-3))
            repetitions = max(CUDA_MIN_REPETITIONS, min(CUDA_MAX_REPETITIONS, repetitions))
            return Timing.of(self._per_launch_ms(replay, repetitions))

    def retime(self, configs: Sequence[Config], rounds: int | None = None) -> list[float]:
        """Median per-launch ms of each config, timed interleaved: round after round, one replay of
        each, starting one further along each round, so drift (clocks, temperature, a neighbour on the
        machine) falls on all of them alike instead of on whichever ran last."""
        if rounds is None:
            rounds = RETIME_ROUNDS_CUDA if self.device.type == "cuda" else RETIME_ROUNDS_INTERPRET
        for config in configs:
            self.load(config)
        self._input_copies()
        with self.phase("capture"):
            replays = [self._replayable(c) for c in configs]
        samples: list[list[float]] = [[] for _ in configs]
        with self.phase("retime"):
            for r in range(rounds):
                for i in [(r + j) % len(configs) for j in range(len(configs))]:
                    samples[i] += self._per_launch_ms(replays[i], 1)
        return [statistics.median(s) for s in samples]


def measure_trial(bench: ProblemBench, config: Config, budget_ms: float = CUDA_BUDGET_MS) -> Measurement:
    """Correctness, then timing; an exception out of the launcher is the caller's to classify."""
    bench.load(config)
    with bench.phase("check"):
        rel_error, wrong = bench.check(config)
    finite_error = rel_error if math.isfinite(rel_error) else None
    if wrong is not None:
        return Measurement(TrialStatus.WRONG, rel_error=finite_error, error=wrong)
    timing = bench.time(config, budget_ms)
    return Measurement(
        TrialStatus.OK,
        median_ms=timing.median_ms,
        min_ms=timing.min_ms,
        max_ms=timing.max_ms,
        spread_ms=timing.spread_ms,
        repetitions=timing.repetitions,
        rel_error=finite_error,
    )
