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


def categorical_colors(n: int):
    """n distinct colors (tab10, cycling): for curves that are categories (classes, logits)."""
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


SPLIT_COLORS = {"train": "tab:blue", "test": "tab:red"}


def step_axis(ax, xs=None, *, linthresh: float = 1.0, xlabel: str = "step t") -> None:
    """A training-time x axis: symlog from 0 (step 0 is drawn, log-spaced beyond `linthresh`), up to
    1.1 max(xs) when `xs` is given."""
    ax.set_xscale("symlog", linthresh=linthresh)
    if xs is not None and len(xs):
        ax.set_xlim(0, max(xs) * 1.1)
    else:
        ax.set_xlim(left=0)
    ax.set_xlabel(xlabel)


def split_curves(ax, table, styles: dict, *, x: str = "step") -> None:
    """Train (blue) and test (red) curves from a tidy table (columns split, model, `x`, value), one
    line style per model: ``styles = {model: (label, plot keywords)}``, e.g. a network (solid) beside
    its linearization (dashed)."""
    for split, color in SPLIT_COLORS.items():
        for model, (label, style) in styles.items():
            g = table[(table["split"] == split) & (table["model"] == model)].sort_values(x)
            ax.plot(g[x], g["value"], color=color, label=f"{split}, {label}", **style)
    ax.legend()


def paired_curves(ax, table, groups: list, styles: dict, *, x: str = "step", palette=None) -> None:
    """One color per group (a dict of column values selecting rows of the tidy `table`), one line
    style per model (column `model`): ``styles = {model: (label, plot keywords)}``; e.g. the outputs
    of a few points, a network solid beside its linearization dashed.  Colors from `palette` (default
    `colors`); the legend names the models."""
    for color, sel in zip(palette or colors(max(1, len(groups))), groups):
        for model, (_, style) in styles.items():
            g = table[table["model"] == model]
            for key, value in sel.items():
                g = g[g[key] == value]
            g = g.sort_values(x)
            ax.plot(g[x], g["value"], color=color, **style)
    for label, style in styles.values():
        ax.plot([], [], color="k", label=label, **style)


def curves(ax, table, by: str, *, x: str, y: str = "value", label: str = "{}", **style) -> None:
    """One curve of `y` against `x` per value of column `by` of a tidy table (e.g. one per width), in
    increasing order of the value, colored by `colors`; `label` formats the value ("n = {}")."""
    values = sorted(table[by].unique())
    for color, v in zip(colors(len(values)), values):
        g = table[table[by] == v].sort_values(x)
        ax.plot(g[x], g[y], color=color, label=label.format(v), **style)
