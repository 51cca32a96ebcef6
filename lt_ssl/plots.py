"""Report figures (cluster scatter, t-SNE, class distribution, accuracy bars) rendered off-screen to PNG bytes."""

from __future__ import annotations

import io

import numpy as np
from torch import Tensor

from lt_ssl.errors import DataError

# Scatter plots past this many points are unreadable and slow to render; a seeded subsample stays deterministic.
MAX_SCATTER_POINTS = 20_000


def cluster_scatter_png(
    features: Tensor | np.ndarray, assignments: Tensor | np.ndarray, labels: Tensor | np.ndarray | None = None
) -> bytes:
    """PNG of features: (N, D) projected to 2-D by PCA, coloured by assignments: (N,) and, beside, by labels: (N,)."""
    feats = _np(features)
    ids = _np(assignments).astype(np.int64)
    if feats.ndim != 2 or ids.shape != (feats.shape[0],):
        raise DataError(f"scatter needs features (N, D) and assignments (N,), got {feats.shape} and {ids.shape}")
    cls = None if labels is None else _np(labels).astype(np.int64)
    if cls is not None and cls.shape != ids.shape:
        raise DataError(f"scatter labels have shape {cls.shape}, expected {ids.shape}")
    if feats.shape[0] > MAX_SCATTER_POINTS:
        keep = np.sort(np.random.default_rng(0).choice(feats.shape[0], MAX_SCATTER_POINTS, replace=False))
        feats, ids = feats[keep], ids[keep]
        cls = None if cls is None else cls[keep]
    xy = _pca_2d(feats.astype(np.float64))

    panels = [("cluster", ids)] + ([] if cls is None else [("class", cls)])
    fig = _figure(figsize=(5.5 * len(panels), 5))
    for i, (name, colour) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        n_colours = int(colour.max()) + 1 if colour.size else 1
        # vmin/vmax at half steps map id i to the i-th colour of an n-colour map.
        ax.scatter(xy[:, 0], xy[:, 1], c=colour, cmap=_cmap(n_colours), vmin=-0.5, vmax=n_colours - 0.5, s=3, lw=0)
        ax.set_title(f"features (PCA), coloured by {name}")
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    return _png(fig)


def tsne_png(xy: np.ndarray, labels: Tensor | np.ndarray, title: str) -> bytes:
    """PNG of 2-D points xy: (N, 2) (a t-SNE embedding) coloured by labels: (N,) (the true classes)."""
    cls = _np(labels).astype(np.int64)
    if xy.ndim != 2 or xy.shape[1] != 2 or cls.shape != (xy.shape[0],):
        raise DataError(f"t-SNE plot needs points (N, 2) and labels (N,), got {xy.shape} and {cls.shape}")
    n_colours = int(cls.max()) + 1 if cls.size else 1
    fig = _figure(figsize=(6, 5))
    ax = fig.add_subplot(1, 1, 1)
    points = ax.scatter(xy[:, 0], xy[:, 1], c=cls, cmap=_cmap(n_colours), vmin=-0.5, vmax=n_colours - 0.5, s=4, lw=0)
    fig.colorbar(points, ax=ax, ticks=range(n_colours), label="class")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return _png(fig)


def class_distribution_png(
    labels: Tensor | np.ndarray, assignments: Tensor | np.ndarray, num_classes: int, k: int
) -> bytes:
    """PNG: per-class training counts sorted by frequency (the long tail), and each cluster's class composition.

    labels, assignments: (N,). Classes are coloured by frequency rank in both panels, so the tail panel is the legend.
    """
    cls = _np(labels).astype(np.int64)
    ids = _np(assignments).astype(np.int64)
    if cls.shape != ids.shape or cls.ndim != 1:
        raise DataError(f"labels and assignments must both be (N,), got {cls.shape} and {ids.shape}")
    if cls.size and (cls.min() < 0 or cls.max() >= num_classes or ids.min() < 0 or ids.max() >= k):
        raise DataError(f"labels must lie in [0, {num_classes}) and assignments in [0, {k}); check the cluster inputs")
    counts = np.bincount(cls, minlength=num_classes)
    order = np.argsort(-counts, kind="stable")  # head classes first
    composition = np.zeros((k, num_classes), dtype=np.int64)
    np.add.at(composition, (ids, cls), 1)
    colours = _cmap(num_classes)(np.arange(num_classes))

    fig = _figure(figsize=(12, 4.5))
    tail = fig.add_subplot(1, 2, 1)
    tail.bar(np.arange(num_classes), counts[order], color=colours, width=1.0)
    tail.set_title("training images per class")
    tail.set_xlabel("class, sorted by frequency")
    tail.set_ylabel("images")
    if num_classes <= 20:
        tail.set_xticks(np.arange(num_classes), [str(c) for c in order])

    stack = fig.add_subplot(1, 2, 2)
    bottom = np.zeros(k)
    for rank, c in enumerate(order):
        stack.bar(np.arange(k), composition[:, c], bottom=bottom, color=colours[rank], width=0.8)
        bottom += composition[:, c]
    stack.set_title("class composition of each cluster")
    stack.set_xlabel("cluster")
    stack.set_ylabel("images")
    stack.set_xticks(np.arange(k))
    return _png(fig)


def accuracy_bars_png(results: dict[str, dict[str, float]]) -> bytes:
    """PNG of grouped bars: for each group (many, medium, few, all...) one bar per model; accuracies in [0, 1]."""
    if not results:
        raise DataError("no results to plot; run an evaluation first")
    groups: list[str] = []
    for accs in results.values():
        groups += [g for g in accs if g not in groups]
    width = 0.8 / len(results)
    x = np.arange(len(groups))

    fig = _figure(figsize=(max(6, 1.6 * len(groups) * max(1, len(results) / 2)), 4.5))
    ax = fig.add_subplot(1, 1, 1)
    colours = _cmap(len(results))(np.arange(len(results)))
    for i, (model, accs) in enumerate(results.items()):
        values = np.array([100 * accs.get(g, np.nan) for g in groups], dtype=float)
        bars = ax.bar(x + (i - (len(results) - 1) / 2) * width, values, width, label=model, color=colours[i])
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(x, groups)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.set_title("accuracy by class-frequency group")
    return _png(fig)


def experiment_bars_png(rows: dict[str, dict[str, tuple[float, float] | None]]) -> bytes:
    """PNG of horizontal bars, one row per label and one bar per evaluation (knn, linear): mean top-1 in [0, 1]
    with a +-std whisker (none when the std is NaN, i.e. one finished cell). Rows without results show no bar."""
    if not rows:
        raise DataError("no experiment rows to plot; check the experiment's axes")
    evals = list(dict.fromkeys(e for r in rows.values() for e in r))
    height = 0.8 / max(1, len(evals))
    y = np.arange(len(rows))
    fig = _figure(figsize=(9, max(3, 0.35 * len(rows) * max(1, len(evals) / 2) + 1)))
    ax = fig.add_subplot(1, 1, 1)
    colours = _cmap(len(evals))(np.arange(len(evals)))
    for i, ev in enumerate(evals):
        stats = [r.get(ev) for r in rows.values()]
        mean = np.array([np.nan if s is None else 100 * s[0] for s in stats])
        std = np.array([0.0 if s is None or np.isnan(s[1]) else 100 * s[1] for s in stats])
        ax.barh(y + (i - (len(evals) - 1) / 2) * height, mean, height, xerr=std, label=ev, color=colours[i],
                error_kw={"elinewidth": 0.8, "capsize": 2})
    ax.set_yticks(y, list(rows), fontsize=7)
    ax.invert_yaxis()  # first row on top, as in the table
    ax.set_xlabel("top-1 accuracy (%)")
    ax.set_xlim(0, 100)
    ax.legend(fontsize=8, loc="lower right")  # bars start at the left: the lower right is the emptiest corner
    ax.set_title("mean ± std over splits and seeds")
    return _png(fig)


def _np(values: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().float().cpu().numpy() if values.is_floating_point() else values.detach().cpu().numpy()
    return np.asarray(values)


def _pca_2d(feats: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, 2): projections on the top two principal axes (zeros where N or D leaves fewer)."""
    centred = feats - feats.mean(axis=0)
    # Eigen-decomposing the (D, D) covariance is far cheaper than an SVD of (N, D) when N >> D, and exact.
    _, vecs = np.linalg.eigh(centred.T @ centred)
    n_comp = min(2, feats.shape[0] - 1, feats.shape[1])
    xy = np.zeros((feats.shape[0], 2))
    if n_comp > 0:
        axes = vecs[:, ::-1][:, :n_comp]  # eigh sorts eigenvalues ascending
        # Fix each axis's sign (largest loading positive) so the picture does not flip between LAPACK builds.
        axes = axes * np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(n_comp)])
        xy[:, :n_comp] = centred @ axes
    return xy


def _figure(**kwargs):
    """A matplotlib Figure, imported here: matplotlib costs every stage process ~0.3-3 s to import, and only the
    stages that draw (prepare, cluster, pseudolabel, evaluate) need it."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _cmap(n: int):
    # tab10/tab20 keep a handful of clusters or classes distinguishable; past 20, a smooth map is all that scales.
    name = "tab10" if n <= 10 else "tab20" if n <= 20 else "viridis"
    from matplotlib import colormaps

    return colormaps[name].resampled(max(n, 1))


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # attaches an Agg canvas: no pyplot, no global backend switch, safe in worker threads
    fig.tight_layout()
    buf = io.BytesIO()
    # No Software/date metadata, so identical inputs give identical bytes.
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()
