"""`gdn-tune report --png`: the winners' speedups as a bar chart (matplotlib, which gdn-tune does not
depend on, imported only when asked for)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from gdn_kernels.tuning import replaced_atomically


def pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise click.ClickException(
            "--png needs matplotlib, which gdn-tune does not depend on: pip install matplotlib"
        ) from None
    return plt


def plot_speedups(plt: Any, table: list[dict[str, Any]], path: Path) -> None:
    """One bar per winner: its speedup over the default config; the line at 1× is the default."""
    rows = [r for r in table if r["speedup"] is not None]
    fig, ax = plt.subplots(figsize=(10, max(2.0, 0.25 * len(rows) + 1)))
    labels = [f"{r['kernel']} " + "-".join(f"{k}={v}" for k, v in r["key"].items()) for r in rows]
    ax.barh(labels, [r["speedup"] for r in rows])
    ax.axvline(1.0, color="black", linewidth=0.8)
    measured = sorted({f"{r['target']} ({r['gpu_name']})" for r in table})
    timing = ", CPU wall clock of the interpreter" if any(r["interpret"] for r in table) else ""
    ax.set_title(f"gdn-tune report: {', '.join(measured) or 'no winners'}{timing}")
    ax.set_xlabel("speedup over the default config (× = default's time / winner's time, each re-timed)")
    fig.tight_layout()
    with replaced_atomically(path) as temp:
        fig.savefig(temp, dpi=120, format="png")  # the temporary name has no .png to go by
    plt.close(fig)
