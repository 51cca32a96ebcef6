"""The human-readable side of a run: the results table and report.md."""

from __future__ import annotations

from ..config import Config
from ..store import Store

GROUPS = ("top1", "many", "medium", "few")
MODEL_ORDER = ("pixels", "random", "base", "baseline", "student")  # the floors first, the recipe's output last


def results_table(results: dict[str, dict]) -> str:
    """Markdown table: one row per model and evaluation, accuracy in % for all/many/medium/few."""
    lines = ["| model | eval | all | many | medium | few |", "|---|---|---|---|---|---|"]
    for model in sorted(results, key=lambda m: (MODEL_ORDER.index(m) if m in MODEL_ORDER else len(MODEL_ORDER), m)):
        for evaluation, rep in results[model].items():
            cells = " | ".join(f"{100 * rep[g]:.2f}" for g in GROUPS)
            lines.append(f"| {model} | {evaluation} | {cells} |")
    return "\n".join(lines)


def markdown(cfg: Config, info: dict, results: dict[str, dict], store: Store) -> str:
    sizes = store.read_json("cluster/sizes.json")["sizes"] if store.exists("cluster/sizes.json") else []
    counts = info["class_counts"]
    return f"""# lt-ssl run `{cfg.name}`

Dataset **{info['dataset']}** ({info['subset']} subset, imbalance {cfg.data.imbalance:g}, split {cfg.data.split}):
{info['subset_size']} training images, per-class counts {counts}.
Groups by long-tailed training count: many {info['groups']['many']}, medium {info['groups']['medium']}, few {info['groups']['few']}.

Recipe: base {cfg.method.name} ({cfg.backbone}) {cfg.pretrain.epochs} epochs → k-means K={cfg.cluster.k}
(cluster sizes {sizes}) → experts {cfg.expert.train.epochs} epochs each → student distilled {cfg.distill.train.epochs} epochs.

## Top-1 accuracy on the test set (%)

kNN: cosine, k={cfg.evaluate.knn_k}, T={cfg.evaluate.knn_temperature}; linear: logistic regression on frozen
features; both trained per protocol `{cfg.evaluate.protocol}` (full_balanced: the full training set; balanced_subset:
a balanced subset as large as the pre-training subset). Floors: `random` is an untrained encoder of the same
architecture, `pixels` the flattened normalised images.

{results_table(results)}

![accuracy by group](accuracy.png)

## Clusters

![PCA of base features by cluster](../cluster/scatter.png)
![class distribution per cluster](../cluster/class_distribution.png)
""" + (_PSEUDOLABELS if store.exists("pseudolabel/tsne.png") else "")


_PSEUDOLABELS = """
## Pseudo-labels

![t-SNE of the denoising autoencoder's codes by true class](../pseudolabel/tsne.png)
"""
