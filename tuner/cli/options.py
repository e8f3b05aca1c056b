"""What several commands share: the options they take, defined once as decorators, the parsers behind
them, and `domain_errors`, which turns the tuner's errors into click's.

Nothing here imports the database, torch or triton: `gdn-tune --help` parses with these alone.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, TypeVar

import click

from gdn_kernels import Workload
from gdn_kernels.tuning import FileWriteError, UnknownTargetError

from ..constants import DEFAULT_DB_URL
from ..errors import USAGE_ERRORS, StorageError
from ..sweep.target import parse_target

Command = TypeVar("Command", bound=Callable[..., Any])

# Errors a command reports in one line (exit 1) rather than as a traceback: what a user gave or the
# state of the database, tables or GPU made the command fail (USAGE_ERRORS are usage errors, exit 2).
DOMAIN_ERRORS: tuple[type[Exception], ...] = (ValueError, StorageError, FileWriteError)


def domain_errors(command: Command) -> Command:
    """Turn the tuner's errors raised by `command` into click's: usage errors (exit 2) for USAGE_ERRORS,
    one-line failures (exit 1) for DOMAIN_ERRORS. Goes right above the function, below its options."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except USAGE_ERRORS as e:
            raise click.UsageError(str(e)) from None
        except DOMAIN_ERRORS as e:
            raise click.ClickException(str(e)) from e

    return wrapper  # type: ignore[return-value]


class TargetType(click.ParamType):
    """A GPU target by name (or, with `auto`, the word "auto": the GPU present); an unknown name is a
    usage error (exit 2) listing the known ones, in every command that takes one."""

    name = "gpu"

    def __init__(self, auto: bool = False) -> None:
        self.auto = auto

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        try:
            return parse_target(value, allow_auto=self.auto)
        except UnknownTargetError as e:
            self.fail(f"{e}{', or auto' if self.auto else ''}", param, ctx)


def target_option(
    help_text: str, required: bool = False, auto: bool = False, default: str | None = None
) -> Any:
    """`--gpu NAME` (`target` in the command): a target of `gdn-tune targets`, or with `auto` also "auto"."""
    return click.option(
        "--gpu",
        "target",
        required=required,
        default=default,
        show_default=default is not None,
        type=TargetType(auto=auto),
        help=help_text,
    )


def preset_option(help_text: str) -> Any:
    """`--preset NAME`, one of the presets (listed in --help; another name is a usage error, exit 2)."""
    from ..presets import PRESETS

    return click.option("--preset", type=click.Choice(list(PRESETS)), help=help_text)


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")

db_option = click.option(
    "--db",
    "db_url",
    default=DEFAULT_DB_URL,
    show_default=True,
    envvar="GDN_TUNE_DB",
    help="SQLAlchemy URL of the sweep database (also $GDN_TUNE_DB), e.g. postgresql://user@host/gdn "
    "(needs the postgres extra: pip install 'gdn-tune[postgres]').",
)

extra_specs_option = click.option(
    "--extra-specs",
    multiple=True,
    metavar="MODULE:ATTR",
    help="Also tune the KernelSpec(s) at this import path (repeatable; also $GDN_TUNE_EXTRA_SPECS).",
)


def _parsed_by(parse: Callable[[str], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback parsing each value with `parse`; its ValueError is a one-line failure (exit 1)."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        try:
            if isinstance(value, tuple):
                return tuple(parse(v) for v in value)
            return None if value is None else parse(value)
        except ValueError as e:
            raise click.ClickException(str(e)) from None

    return callback


def kernel_names(text: str) -> list[str] | None:
    """The names of a comma-separated `--kernels` list (None when it names none: every kernel)."""
    return [k.strip() for k in text.split(",") if k.strip()] or None


kernels_option = click.option(
    "--kernels", callback=_parsed_by(kernel_names), help="Comma-separated kernel names (default: all)."
)


def shapes_option(help_text: str) -> Any:
    """`--shape H=..,HV=..,...` (repeatable), each parsed into a Workload (`parse_shape`)."""
    return click.option(
        "--shape",
        "shapes",
        multiple=True,
        callback=_parsed_by(parse_shape),
        metavar="H=..,HV=..,K=..,V=..,T=..[,N=..][,phase=decode][,dtype=..]",
        help=help_text,
    )


def duration_option(name: str, help_text: str) -> Any:
    """An option taking a duration ('90', '90s', '20m', '1h30m'), given to the command in seconds."""
    return click.option(name, callback=_parsed_by(parse_duration), help=help_text)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([hms])")


def parse_duration(text: str) -> float:
    """Seconds in '90', '90s', '20m', '1h30m'."""
    text = text.strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 20m, 1h30m)")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


_SHAPE_FIELDS = {"H", "HV", "K", "V", "T", "N", "dtype", "phase", "state_dtype", "state_layout"}
_PHASES = ("prefill", "decode", "decode_gated", "decode_packed", "spec_decode")


def parse_shape(text: str) -> Workload:
    """A workload from 'H=16,HV=32,K=128,V=128,T=8192[,N=1][,phase=decode][,dtype=bfloat16]
    [,state_dtype=bfloat16][,state_layout=vk]'."""
    fields: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name not in _SHAPE_FIELDS:
            raise ValueError(
                f"--shape {text!r}: {part!r} is not one of {', '.join(sorted(_SHAPE_FIELDS))}=VALUE"
            )
        fields[name] = value
    missing = [f for f in ("H", "HV", "K", "V", "T") if f not in fields]
    if missing:
        raise ValueError(f"--shape {text!r}: missing {', '.join(missing)}")
    try:
        numbers = {f: int(fields[f]) for f in ("H", "HV", "K", "V", "T")}
        sequences = int(fields.get("N", "1"))
    except ValueError as e:
        raise ValueError(f"--shape {text!r}: H, HV, K, V, T and N must be integers ({e})") from None
    phase = fields.get("phase", "prefill")
    if phase not in _PHASES:
        raise ValueError(f"--shape {text!r}: phase must be one of {', '.join(_PHASES)}, got {phase!r}")
    state = (fields.get("state_dtype", "float32"), fields.get("state_layout", "kv"))
    if state[0] not in ("float32", "bfloat16", "float16") or state[1] not in ("kv", "vk"):
        raise ValueError(
            f"--shape {text!r}: state_dtype must be float32/bfloat16/float16, state_layout kv/vk"
        )
    if min(*numbers.values(), sequences) < 1 or numbers["HV"] % numbers["H"]:
        raise ValueError(f"--shape {text!r}: sizes must be positive and HV a multiple of H")
    return Workload(
        numbers["H"],
        numbers["HV"],
        numbers["K"],
        numbers["V"],
        tokens=numbers["T"],
        sequences=sequences,
        dtype=fields.get("dtype", "bfloat16"),
        phase=phase,
        state_dtype=state[0],
        state_layout=state[1],
    )
