"""What a tunable kernel declares, in one place: lookup key, search space, default config, inputs, reference.

The tuner and the runtime both read these objects; nothing about a kernel is written twice.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

KeyValue = int | str | bool

# Triton's launch accepts these warp counts; the hardware caps a block at 32 warps (1024 threads).
VALID_NUM_WARPS = (1, 2, 4, 8, 16, 32)
# Software-pipelining depth; beyond 8 no kernel here gains and shared memory runs out first.
VALID_NUM_STAGES = range(1, 9)
LAUNCH_PARAMS = ("num_warps", "num_stages")

# Prefill chunk size. 64 keeps the (I + A)⁻¹ solve at 64×64 in registers; FLA and every serving
# engine use the same value, so cached states and tables stay interchangeable.
CHUNK_SIZE = 64


def pow2_ceil(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def token_bucket(tokens: int) -> int:
    """Bucket of a token count: the next power of two, at least one chunk."""
    return max(CHUNK_SIZE, pow2_ceil(tokens))


def sequence_bucket(sequences: int) -> int:
    """Bucket of a sequence count (decode batch, state recurrence grid): the next power of two."""
    return pow2_ceil(max(1, sequences))


@dataclass(frozen=True)
class Key:
    """Lookup key of one problem: field → value, in the spec's field order. Hashable and cheap."""

    items: tuple[tuple[str, KeyValue], ...]

    def __getitem__(self, name: str) -> KeyValue:
        for k, v in self.items:
            if k == name:
                return v
        raise KeyError(name)

    def as_dict(self) -> dict[str, KeyValue]:
        return dict(self.items)

    def replace(self, **changes: KeyValue) -> Key:
        return Key(tuple((k, changes.get(k, v)) for k, v in self.items))

    @property
    def label(self) -> str:
        """Readable id, e.g. `dtype=bfloat16-H=16-HV=64-K=128-V=128-T=8192`."""
        return "-".join(f"{k}={v}" for k, v in self.items)


@dataclass(frozen=True)
class Config:
    """Block sizes plus num_warps and num_stages. Hashable; compares by value."""

    params: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, **params: int) -> Config:
        return cls(tuple(sorted(params.items())))

    @classmethod
    def from_dict(cls, params: Mapping[str, int]) -> Config:
        return cls.of(**params)

    def __getitem__(self, name: str) -> int:
        for k, v in self.params:
            if k == name:
                return v
        raise KeyError(name)

    def get(self, name: str, default: int | None = None) -> int | None:
        try:
            return self[name]
        except KeyError:
            return default

    def as_dict(self) -> dict[str, int]:
        return dict(self.params)

    @property
    def num_warps(self) -> int:
        return self["num_warps"]

    @property
    def num_stages(self) -> int:
        return self["num_stages"]

    def block_params(self) -> dict[str, int]:
        """The constexpr arguments of the kernel (everything but the launch options)."""
        return {k: v for k, v in self.params if k not in LAUNCH_PARAMS}

    @property
    def label(self) -> str:
        return "-".join(f"{k}{v}" for k, v in self.params)


@dataclass(frozen=True)
class Param:
    """One tunable parameter: the values a sweep tries, and the range a table entry may hold."""

    name: str
    values: tuple[int, ...]
    why: str = ""
    power_of_two: bool = True
    lo: int | None = None  # accepted range in tables; defaults to the candidates' range
    hi: int | None = None

    def accepts(self, value: object) -> str | None:
        """None when `value` is acceptable, else the reason it is not."""
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{self.name} must be an integer, got {value!r}"
        if self.name == "num_warps":
            return (
                None
                if value in VALID_NUM_WARPS
                else f"num_warps must be one of {VALID_NUM_WARPS}, got {value}"
            )
        if self.name == "num_stages":
            return None if value in VALID_NUM_STAGES else f"num_stages must be in 1..8, got {value}"
        if self.power_of_two and (value < 1 or value & (value - 1)):
            return f"{self.name} must be a power of two, got {value}"
        lo = min(self.values) if self.lo is None else self.lo
        hi = max(self.values) if self.hi is None else self.hi
        if not lo <= value <= hi:
            return f"{self.name} must be in {lo}..{hi}, got {value}"
        return None


def warps(*values: int, why: str = "") -> Param:
    return Param("num_warps", values, why)


def stages(*values: int, why: str = "") -> Param:
    return Param("num_stages", values, why, power_of_two=False)


@dataclass(frozen=True)
class Constraint:
    """A rule a config must satisfy for a key, e.g. "BV divides V"; `why` is shown when it fails."""

    why: str
    holds: Callable[[Config, Key], bool]


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]
    constraints: tuple[Constraint, ...] = ()

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        # Cached: validating a table reads it for every parameter of every entry.
        return tuple(p.name for p in self.params)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def candidates(self, key: Key, values: Mapping[str, Iterable[int]] | None = None) -> list[Config]:
        """Every combination of the candidate values (or of `values`, per parameter) that satisfies the
        constraints for `key`."""
        choices = [tuple(values[p.name]) if values else p.values for p in self.params]
        combos = itertools.product(*choices)
        configs = (Config.of(**dict(zip(self.names, combo, strict=True))) for combo in combos)
        return [c for c in configs if not self.problems(c, key)]

    def table_values(self) -> dict[str, tuple[int, ...]]:
        """Per parameter: its candidates and every power of two in the range a table entry may hold
        (warps and stages: their candidates)."""
        found = {}
        for p in self.params:
            extra: set[int] = set()
            if p.name not in LAUNCH_PARAMS:
                lo, hi = min(p.values) if p.lo is None else p.lo, max(p.values) if p.hi is None else p.hi
                extra = {1 << i for i in range(hi.bit_length()) if lo <= 1 << i <= hi}
            found[p.name] = tuple(sorted(set(p.values) | extra))
        return found

    def problems(self, config: Config, key: Key | None = None) -> list[str]:
        """Why `config` is not acceptable (for `key`, when given); empty when it is."""
        found = []
        given = dict(config.params)
        for name in given:
            if name not in self.names:
                found.append(f"unknown parameter {name!r} (known: {', '.join(self.names)})")
        for p in self.params:
            if p.name not in given:
                found.append(f"missing parameter {p.name!r}")
            elif (reason := p.accepts(given[p.name])) is not None:
                found.append(reason)
        if key is not None and not found:
            found += [f"constraint failed: {c.why}" for c in self.constraints if not c.holds(config, key)]
        return found

    def describe(self) -> str:
        """Stable text of the space, part of the kernel hash a table records."""
        lines = [f"{p.name}={list(p.values)} pow2={p.power_of_two} lo={p.lo} hi={p.hi}" for p in self.params]
        lines += [f"constraint: {c.why}" for c in self.constraints]
        return "\n".join(lines)


Tensors = dict[str, "torch.Tensor"]


@dataclass(frozen=True)
class Workload:
    """One call's shape as a model presents it: what a preset lists and what keys derive from."""

    H: int  # query/key heads
    HV: int  # value heads, a multiple of H
    K: int
    V: int
    tokens: int  # total tokens of the call (prefill) or sequences (decode: one token each)
    sequences: int = 1
    dtype: str = "bfloat16"
    # "prefill" (chunked path), "decode" (one token per sequence), "decode_gated" (gates computed in
    # the decode kernel), "decode_packed" (q, k, v read from the fused projection), "spec_decode"
    # (tokens / sequences draft tokens per sequence): each kernel is tuned for the phases it serves.
    phase: str = "prefill"
    state_dtype: str = "float32"  # the recurrent state's dtype (a serving engine's cache dtype)
    state_layout: str = "kv"  # [.., K, V] ("kv") or [.., V, K] ("vk")

    @property
    def label(self) -> str:
        label = f"{self.dtype}-H{self.H}-HV{self.HV}-K{self.K}-V{self.V}-T{self.tokens}-N{self.sequences}"
        if (self.state_dtype, self.state_layout) != ("float32", "kv"):
            label += f"-state={self.state_dtype}-{self.state_layout}"
        return label


# Names of every KernelSpec made in this process: the registry's, and specs that tests or
# `--extra-specs` inject; the runtime reports a table file named after none of them.
_declared_names: set[str] = set()


def declared_kernel_names() -> set[str]:
    return set(_declared_names)


@dataclass(frozen=True)
class KernelSpec:
    """Everything the tuner and the runtime need to know about one tunable kernel.

    Contract of the callables:
    - `key_for(workload)`: the lookup key a call of that workload resolves (the launcher uses the same
      function on the tensors it receives, so the tuner tunes exactly what production looks up).
    - `make_inputs(key, device, seed)`: realistic inputs for the key's shape, freshly random for a seed.
    - `make_outputs(inputs)`: uninitialised output tensors, which a check poisons before launching.
    - `launch(inputs, outputs, config)`: runs the kernel once, asynchronously; never synchronises.
    - `reference(inputs)`: float64 results for the outputs it names (a subset of make_outputs' names).
    """

    name: str
    doc: str
    key_fields: tuple[str, ...]
    space: SearchSpace
    default: Config
    jit_functions: tuple[Any, ...]
    key_for: Callable[[Workload], Key]
    make_inputs: Callable[[Key, Any, int], Tensors]
    make_outputs: Callable[[Tensors], Tensors]
    launch: Callable[[Tensors, Tensors, Config], None]
    reference: Callable[[Tensors], Tensors]
    tolerance: float = 1e-2  # relative L2 error allowed per output, 16-bit inputs
    phases: tuple[str, ...] = ("prefill",)  # which workloads of a preset this kernel is tuned for
    bytes_moved: Callable[[Key], int] | None = None  # for bandwidth figures in reports
    # Key fields whose value changes the compiled kernel but hardly its best config: a key with no
    # entry of its own resolves as the key with these (field, value) pairs would.
    fallback_fields: tuple[tuple[str, KeyValue], ...] = ()
    # Members of jit_functions launched beside the kernel with a fixed config (the varlen guard): listed
    # there so `gdn-tune warmup` compiles them, left out of source_hash because they do not shape the
    # tuned config, so changing them leaves the tables current.
    untuned_functions: tuple[Any, ...] = ()
    # A structure spec whose default runs other kernels on their own tables (chunk_fused's split): with
    # no table of its own it is untuned, not misconfigured, so strict mode does not ask for one.
    table_optional: bool = False
    _hash: list[str] = field(default_factory=list, compare=False, repr=False)
    _keys: dict[tuple, Key] = field(default_factory=dict, compare=False, repr=False)
    _defaults: dict[tuple, Config] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        _declared_names.add(self.name)

    def key(self, **fields: KeyValue) -> Key:
        """A key with exactly this spec's fields, in order."""
        missing = [f for f in self.key_fields if f not in fields]
        unknown = [f for f in fields if f not in self.key_fields]
        if missing or unknown:
            raise ValueError(f"{self.name}: key fields missing {missing}, unknown {unknown}")
        return Key(tuple((f, fields[f]) for f in self.key_fields))

    def memoised_key(self, dtype: torch.dtype | str, *values: KeyValue) -> Key:
        """The key of `dtype` (the first key field) and the other fields' values in order, buckets
        already applied. Memoised: launchers call it on every forward call, where `key` would check
        the fields again (a few µs)."""
        memo = (dtype, *values)
        key = self._keys.get(memo)
        if key is None:
            fields = zip(self.key_fields, (str(dtype).removeprefix("torch."), *values), strict=True)
            key = self._keys[memo] = self.key(**dict(fields))
        return key

    def default_for(self, key: Key) -> Config:
        """The config a key runs when no table has one: `default` where the space accepts it for the
        key, else the accepted config nearest to it (distance: Σ |log2 ratio| over the parameters; ties
        to the earlier one), among the candidates or, when none is accepted, among every power of two
        a table may hold. `default` is chosen for the presets' K = V = 128, and a space may reject it
        for narrower heads (chunk_wu's BK 64 > pow2(K) at K = V = 32; at K = 16 no candidate BK is
        small enough, but 16 is in range): a launch, a sweep's default measurement and a table's default
        time then all use this config. Memoised per key."""
        config = self._defaults.get(key.items)
        if config is None:
            config = self.default
            if self.space.problems(config, key):
                accepted = self.space.candidates(key) or self.space.candidates(key, self.space.table_values())
                # None accepted at all (a shape the kernel does not support): keep the default.
                config = min(accepted, key=self._distance_to_default, default=config)
            self._defaults[key.items] = config
        return config

    def _distance_to_default(self, config: Config) -> float:
        return sum(abs(math.log2(v) - math.log2(self.default.get(k) or v)) for k, v in config.params)

    def source_hash(self) -> str:
        """Hash of the kernels' source and the search space; a table made for another hash is stale."""
        if not self._hash:
            h = hashlib.sha256()
            for fn in self.jit_functions:
                if any(fn is untuned for untuned in self.untuned_functions):
                    continue
                src = getattr(fn, "src", None) or inspect.getsource(getattr(fn, "fn", fn))
                h.update(src.encode())
            h.update(self.space.describe().encode())
            self._hash.append(h.hexdigest()[:16])
        return self._hash[0]


def randn(*shape: int, generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """Standard normal float32 values drawn on the CPU from `generator` (the same values whatever the
    device they go to), or for the meta device, where a launch is only compiled, an empty meta tensor:
    drawing 16k tokens of inputs costs seconds, and the compile pool makes tens of thousands of them."""
    import torch

    if torch.device(device).type == "meta":
        return torch.empty(shape, device="meta")
    return torch.randn(shape, generator=generator)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64; inf when out has a NaN/inf (a poisoned element left unwritten)."""
    import torch

    o = out.detach().to(torch.float64)
    r = ref.detach().to(device=o.device, dtype=torch.float64)
    if not torch.isfinite(o).all():
        return float("inf")
    denom = torch.linalg.vector_norm(r).item()
    num = torch.linalg.vector_norm(o - r).item()
    return num / denom if denom > 0 else num


def compare_outputs(outputs: Tensors, reference: Tensors) -> dict[str, float]:
    """Relative error of each output the reference names."""
    return {name: relative_error(outputs[name], ref) for name, ref in reference.items()}


def unique_keys(keys: Iterable[Key]) -> list[Key]:
    return list(dict.fromkeys(keys))
