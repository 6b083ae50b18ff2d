"""Pictures for the Dagster UI: where a person would rather look than read numbers."""

from __future__ import annotations

import numpy as np


def _figure(size=(6.4, 4.0)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)


def variance_plot(explained: np.ndarray):
    """Scree bars per component with the cumulative curve and the 90%/95% lines."""
    fig, ax = _figure()
    components = np.arange(1, len(explained) + 1)
    ax.bar(components, explained, color="#4c9be8", label="per component")
    ax.plot(components, np.cumsum(explained), color="#e8624c", marker=".", label="cumulative")
    for level in (0.9, 0.95):
        ax.axhline(level, color="grey", linestyle=":", linewidth=1)
        ax.text(components[-1], level, f"{level:.0%}", va="bottom", ha="right", fontsize=8, color="grey")
    ax.set_xlabel("principal component")
    ax.set_ylabel("share of variance explained")
    ax.set_ylim(0, 1.02)
    ax.set_title("PCA of MobileNetV2 features: explained variance")
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
