"""The kernels a sweep can tune: the registry's, plus specs injected by import path.

Injected specs (`module:ATTR`, ATTR a KernelSpec or a sequence of them) come from `--extra-specs` or the
environment variable GDN_TUNE_EXTRA_SPECS (comma-separated). They let tests add kernels that fail in
chosen ways, and let a developer sweep a kernel before it joins the registry. Every process of a sweep
(compile pool, GPU workers) loads the same list, so a name means the same kernel everywhere.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Mapping, Sequence

from gdn_kernels import KernelSpec, kernel_specs

EXTRA_SPECS_ENV = "GDN_TUNE_EXTRA_SPECS"


def extra_spec_paths(given: Iterable[str] = ()) -> tuple[str, ...]:
    """`given` paths followed by those of GDN_TUNE_EXTRA_SPECS, without repeats."""
    from_env = [p.strip() for p in os.environ.get(EXTRA_SPECS_ENV, "").split(",") if p.strip()]
    return tuple(dict.fromkeys([*given, *from_env]))


def load_spec_path(path: str) -> tuple[KernelSpec, ...]:
    """The spec(s) at `module:ATTR`; a clear ValueError when the path is malformed or wrong."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"extra spec {path!r} must be 'module:ATTR'")
    try:
        value = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"extra spec {path!r} cannot be loaded: {e}") from e
    specs = (value,) if isinstance(value, KernelSpec) else tuple(value)
    if not specs or not all(isinstance(s, KernelSpec) for s in specs):
        raise ValueError(f"extra spec {path!r} must name a KernelSpec or a sequence of them")
    return specs


def available_specs(extra_paths: Sequence[str] = ()) -> dict[str, KernelSpec]:
    """Registry specs and the injected ones, by name; an injected name may not shadow another."""
    specs = dict(kernel_specs())
    for path in extra_paths:
        for spec in load_spec_path(path):
            if spec.name in specs and specs[spec.name] is not spec:
                raise ValueError(f"extra spec {path!r}: a kernel named {spec.name!r} already exists")
            specs[spec.name] = spec
    return specs


def select_specs(names: Sequence[str] | None, specs: Mapping[str, KernelSpec]) -> dict[str, KernelSpec]:
    """The specs called `names` (a sweep's or a warm-up's --kernels), in that order and without repeats;
    every one of `specs` when no name is given. A ValueError names the unknown ones and the known."""
    if not names:
        return dict(specs)
    unknown = [name for name in names if name not in specs]
    if unknown:
        raise ValueError(f"unknown kernel(s) {', '.join(unknown)}; known kernels: {', '.join(specs)}")
    return {name: specs[name] for name in dict.fromkeys(names)}
