"""The report's figures: matplotlib's object-oriented API on the Agg canvas (no pyplot, no global
backend, safe in threads), each returned as PNG bytes."""

from __future__ import annotations

import io

import numpy as np

from method.stats import LEVEL
from storage.analysis import BASELINE

MAX_CLASS_BARS = 40  # above this many classes, per-class accuracy is drawn as a sorted difference curve


def png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def new_figure(width: float, height: float):
    # the object-oriented API with the Agg canvas: no pyplot, no global backend, safe in threads
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def gains_figure(title: str, datasets: list[str], variants: list[str], cell: dict, average: dict) -> bytes:
    """Gain per dataset (and the average) with its interval, one marker per variant."""
    single = len(datasets) == 1  # one dataset: the variants along the x axis
    labels = datasets if single else [*datasets, "average"]
    fig = new_figure(6.0 if single else max(6.0, 0.4 * len(labels) * max(1, len(variants))), 3.8)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(variants))
    for j, variant in enumerate(variants):
        xs, ys, lo, hi = [], [], [], []
        for i, label in enumerate(labels):
            g = average.get(variant) if label == "average" else cell.get((label, variant))
            if g is None:
                continue
            xs.append(j if single else i - 0.4 + width * (j + 0.5))
            ys.append(g["gain"])
            lo.append(g["gain"] - g["low"])
            hi.append(g["high"] - g["gain"])
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=3, color=f"C{j}", label=variant)
    ax.axhline(0, color="grey", lw=0.8)
    if single:
        ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right")
        title = f"{datasets[0]}, {title}"
    else:
        ax.set_xticks(range(len(labels)), labels)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_ylabel("gain in top-1 over image-only (points)")
    ax.set_title(f"{title}: gain over image-only, {int(LEVEL * 100)}% paired-bootstrap interval", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return png(fig)


def per_class_figure(
    title: str, names: list[str], base: list[float], best: list[float], variant: str
) -> bytes:
    if len(names) <= MAX_CLASS_BARS:
        fig = new_figure(7.0, 0.8 + 0.32 * len(names))
        ax = fig.add_subplot()
        y = np.arange(len(names))
        ax.barh(y - 0.2, base, height=0.4, label=BASELINE, color="C7")
        ax.barh(y + 0.2, best, height=0.4, label=variant, color="C0")
        ax.set_yticks(y, names)
        ax.invert_yaxis()
        ax.set_xlabel("top-1 accuracy of the class (%)")
        ax.set_xlim(0, 100)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        fig = new_figure(7.0, 3.5)
        ax = fig.add_subplot()
        diff = np.sort(np.asarray(best) - np.asarray(base))[::-1]
        ax.plot(np.arange(len(diff)), diff, color="C0")
        ax.fill_between(np.arange(len(diff)), diff, 0, alpha=0.3, color="C0")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel(f"classes, sorted ({len(names)})")
        ax.set_ylabel(f"{variant} minus {BASELINE} (points)")
    ax.set_title(title, fontsize=10)
    return png(fig)


def confusion_figure(title: str, names: list[str], matrices: dict[str, np.ndarray]) -> bytes:
    k = len(names)
    fig = new_figure(5.2 * len(matrices), 0.9 + 0.4 * k)
    for i, (variant, counts) in enumerate(matrices.items()):
        ax = fig.add_subplot(1, len(matrices), i + 1)
        rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        if k <= 12:
            for r in range(k):
                for c in range(k):
                    ax.text(
                        c,
                        r,
                        int(counts[r, c]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if rates[r, c] > 0.5 else "black",
                    )
        ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(k), names if i == 0 else [""] * k, fontsize=8)
        ax.set_xlabel("predicted (top-1)")
        if i == 0:
            ax.set_ylabel("label")
        ax.set_title(variant, fontsize=9)
    fig.suptitle(title, fontsize=10)
    return png(fig)
