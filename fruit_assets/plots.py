"""Pictures for the Dagster UI: where a person would rather look than read numbers."""

from __future__ import annotations

import numpy as np


def _figure(size=(6.4, 4.0)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)


def variance_plot(spectrum: np.ndarray, k: int):
    """Scree bars for the k kept components, the cumulative curve far enough to cross 95%, and k marked."""
    cumulative = np.cumsum(spectrum)
    reach95 = int(np.searchsorted(cumulative, 0.95)) + 1
    shown = min(len(spectrum), max(k, reach95) + 5)
    fig, ax = _figure()
    components = np.arange(1, shown + 1)
    ax.bar(components[:k], spectrum[:k], color="#4c9be8", label=f"per component (kept: k={k})")
    ax.plot(components, cumulative[:shown], color="#e8624c", linewidth=1.5, label="cumulative")
    ax.axvline(k + 0.5, color="#4c9be8", linestyle="--", linewidth=1)
    for level in (0.9, 0.95):
        ax.axhline(level, color="grey", linestyle=":", linewidth=1)
        ax.text(shown, level, f"{level:.0%}", va="bottom", ha="right", fontsize=8, color="grey")
    ax.set_xlabel("principal component")
    ax.set_ylabel("share of variance explained")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"PCA of MobileNetV2 features: {cumulative[k - 1]:.1%} explained by k={k}")
    ax.legend(loc="center right")
    return fig


def projection_plot(points: np.ndarray, labels: list[str]):
    """The first two principal components, one colour per class."""
    fig, ax = _figure((7.0, 5.0))
    classes = sorted(set(labels))
    from matplotlib import colormaps

    colours = colormaps["tab20"].resampled(max(len(classes), 1))
    index = {name: i for i, name in enumerate(classes)}
    codes = np.array([index[label] for label in labels])
    ax.scatter(points[:, 0], points[:, 1], c=[colours(c) for c in codes], s=4, alpha=0.7, linewidths=0)
    if len(classes) <= 20:
        for name in classes:
            ax.scatter([], [], color=colours(index[name]), label=name, s=12)
        ax.legend(fontsize=7, markerscale=1.5, loc="best", frameon=False)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(f"PCA features, first two components ({len(labels)} images, {len(classes)} classes)")
    return fig
