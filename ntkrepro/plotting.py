"""Shared figure helpers: headless backend, paper-like style, PNG + PDF output."""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "axes.grid": True, "grid.alpha": 0.3,
                     "font.size": 9, "axes.titlesize": 9, "legend.fontsize": 7})


def subplots(nrows: int, ncols: int, *, width: float = 3.2, height: float = 2.7, **kw):
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kw)


def save(fig, out_dir: Path, figure_id: str, caption: str) -> list[Path]:
    """Write <id>.png and <id>.pdf with a caption-like suptitle; returns the paths."""
    width_chars = int(fig.get_figwidth() * 14)
    fig.suptitle("\n".join(textwrap.wrap(caption, width_chars)), fontsize=9)
    fig.tight_layout()
    paths = [Path(out_dir) / f"{figure_id}.{ext}" for ext in ("png", "pdf")]
    for p in paths:
        fig.savefig(p)
    plt.close(fig)
    return paths


def colors(n: int):
    cmap = plt.get_cmap("viridis")
    return [cmap(i / max(1, n - 1) * 0.9) for i in range(n)]
