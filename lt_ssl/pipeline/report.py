"""The human-readable side of a run: the results table and report.md."""

from __future__ import annotations

from ..config import Config
from ..store import Store
from .contract import MODEL_STAGES
from .plan import PLANS

GROUPS = ("top1", "many", "medium", "few")
MODEL_ORDER = ("pixels", "random", *MODEL_STAGES)  # the floors first, then the trained models


def eval_order(evaluation: str) -> tuple:
    """Sort key for evaluations (metrics.json stores them by name): knn, linear, linear_p1, linear_p2, ..., the rest."""
    if evaluation in ("knn", "linear"):
        return (0, evaluation)
    if evaluation.startswith("linear_p") and evaluation[8:].isdigit():
        return (1, int(evaluation[8:]))
    return (2, evaluation)


def results_table(results: dict[str, dict]) -> str:
    """Markdown table: one row per model and evaluation, accuracy in % for all/many/medium/few.

    A probe that does not apply to a model (null in metrics.json, e.g. head_layers for a model without a
    projection head) shows n/a."""
    lines = ["| model | eval | all | many | medium | few |", "|---|---|---|---|---|---|"]
    for model in sorted(results, key=lambda m: (MODEL_ORDER.index(m) if m in MODEL_ORDER else len(MODEL_ORDER), m)):
        for evaluation in sorted(results[model], key=eval_order):
            rep = results[model][evaluation]
            cells = " | ".join("n/a" if rep is None else f"{100 * rep[g]:.2f}" for g in GROUPS)
            lines.append(f"| {model} | {evaluation} | {cells} |")
    return "\n".join(lines)


def extra_probes_text(cfg: Config) -> str:
    """What the evaluate.extra_probes rows mean, for report.md; empty when none ran."""
    ev, parts = cfg.evaluate, []
    if "head_layers" in ev.extra_probes:
        parts.append("`linear_pK` (G-SimCLR's PK): the same linear probe on the features after the projection head "
                     "without its final K layers, so `linear_p1` is the deepest hidden layer and the last K (the "
                     "head's depth) is the backbone itself, the `linear` row; n/a for models without a projection head.")
    if "finetune" in ev.extra_probes:
        parts.append(f"`finetune` (G-SimCLR's semi-supervised protocol): a copy of the encoder and a linear layer "
                     f"trained on a class-stratified {ev.finetune.fraction:.0%} of the probe training set (linear "
                     f"layer warmed up on frozen features, then {ev.finetune.epochs} epochs of Adam at lr "
                     f"{ev.finetune.lr:g}, batch {ev.finetune.batch_size}, BatchNorm statistics frozen).")
    return "\n".join(parts)


def recipe_text(cfg: Config, store: Store) -> str:
    """What the run trained, for report.md: the recipe's chain when its plan clusters, else the method alone."""
    if "cluster" not in PLANS[cfg.plan].names:
        return f"Plan `{cfg.plan}`: {cfg.method.name} ({cfg.backbone}) pre-trained {cfg.pretrain.epochs} epochs, the `base` model."
    sizes = store.read_json("cluster/sizes.json")["sizes"] if store.exists("cluster/sizes.json") else []
    return f"""Recipe: base {cfg.method.name} ({cfg.backbone}) {cfg.pretrain.epochs} epochs → k-means K={cfg.cluster.k}
(cluster sizes {sizes}) → experts {cfg.expert.train.epochs} epochs each → student distilled {cfg.distill.train.epochs} epochs."""


_CLUSTERS = """
## Clusters

![PCA of base features by cluster](../cluster/scatter.png)
![class distribution per cluster](../cluster/class_distribution.png)
"""


def markdown(cfg: Config, info: dict, results: dict[str, dict], store: Store) -> str:
    counts = info["class_counts"]
    extra = "\n" + extra_probes_text(cfg) if cfg.evaluate.extra_probes else ""
    return f"""# lt-ssl run `{cfg.name}`

Dataset **{info['dataset']}** ({info['subset']} subset, imbalance {cfg.data.imbalance:g}, split {cfg.data.split}):
{info['subset_size']} training images, per-class counts {counts}.
Groups by long-tailed training count: many {info['groups']['many']}, medium {info['groups']['medium']}, few {info['groups']['few']}.

{recipe_text(cfg, store)}

## Top-1 accuracy on the test set (%)

kNN: cosine, k={cfg.evaluate.knn_k}, T={cfg.evaluate.knn_temperature}; linear: logistic regression on frozen
features; both trained per protocol `{cfg.evaluate.protocol}` (full_balanced: the full training set; balanced_subset:
a balanced subset as large as the pre-training subset). Floors: `random` is an untrained encoder of the same
architecture, `pixels` the flattened normalised images.{extra}

{results_table(results)}

![accuracy by group](accuracy.png)
""" + (_CLUSTERS if "cluster" in PLANS[cfg.plan].names else "") + (_PSEUDOLABELS if store.exists("pseudolabel/tsne.png") else "")


_PSEUDOLABELS = """
## Pseudo-labels

![t-SNE of the denoising autoencoder's codes by true class](../pseudolabel/tsne.png)
"""
