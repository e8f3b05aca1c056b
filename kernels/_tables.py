"""Run-time config resolution: (kernel, device, key) → Config, cached, never benchmarked.

Resolution order (DESIGN.md "The lookup key"): exact key in the device's tables, then the nearest
token bucket of the same shape, then the kernel's default. Each answer is cached per key, so a
steady-state call costs one dict lookup.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ._spec import Config, KernelSpec, Key

if TYPE_CHECKING:
    import torch


SCHEMA_VERSION = 1


class TableError(ValueError):
    """A table is missing or malformed and GDN_TUNE_STRICT=1 asks for an error instead of a warning."""


class TableWarning(UserWarning):
    """A table file or entry was skipped (or an arch has no tables); the kernel default is used instead."""


def device_folder_name(device_name: str) -> str:
    """The folder of one GPU model's tables: its device name with spaces as "_" ("NVIDIA_H200").

    Only letters, digits, "_", "-" and "." are allowed, and not "." or ".." alone, so a device
    name can never point the lookup outside the arch folder.
    """
    folder = device_name.strip().replace(" ", "_")
    if not folder or folder in (".", "..") or not all(c.isalnum() or c in "_-." for c in folder):
        raise ValueError(
            f"device name {device_name!r} cannot name a table folder (letters, digits, '_-.' only)"
        )
    return folder


@dataclass(frozen=True)
class TableEntry:
    """One row of a table: the config chosen for a key, with its measured time and the default's."""

    key: Key
    config: Config
    time_ms: float | None = None
    default_time_ms: float | None = None


_resolved: dict[tuple[str, int, Key], Config] = {}


def resolve_config(spec: KernelSpec, key: Key, device: torch.device) -> Config:
    """The config a launch of `spec` uses for `key` on `device`."""
    cache_key = (spec.name, device.index or 0, key)
    config = _resolved.get(cache_key)
    if config is None:
        config = _resolved[cache_key] = spec.default
    return config


def shipped_tables_dir() -> Path:
    """The tuned_configs folder shipped in the wheel (or beside the sources in a checkout)."""
    packaged = Path(__file__).resolve().parent / "tuned_configs"
    if packaged.is_dir():
        return packaged
    try:
        from importlib.resources import files

        return Path(str(files("gdn_kernels.tuned_configs")))
    except (ModuleNotFoundError, TypeError):
        return Path(__file__).resolve().parent.parent / "tuned_configs"


def shipped_archs() -> set[str]:
    """Architectures with at least one shipped table."""
    root = shipped_tables_dir()
    return {p.parent.name for p in root.glob("*/*.json")} | {
        p.parent.parent.name for p in root.glob("*/*/*.json")
    }
