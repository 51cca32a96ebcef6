"""The human-readable side of a run: the results table and report.md."""

from __future__ import annotations

import re

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


# results_table's rows and score_line read back (lt_ssl.experiment.log_metrics): a runner's log keeps the results of
# runs whose folders are gone. Each pattern sits beside the printer it reads, so a change to one shows in the other.
_TABLE_ROW = re.compile(r"^\| (?P<model>\w+) \| (?P<eval>\w+) \| (?P<cells>[^|]+(?: \| [^|]+){%d}) \|$" % (len(GROUPS) - 1))
_SCORE_LINE = re.compile(r"^\[evaluate\] (?P<model>\w+): (?P<scores>\w+ [\d.]+(?: \w+ [\d.]+)*) \([\d.]+s\)$")


def parse_results_row(line: str) -> tuple[str, str, dict | None] | None:
    """(model, evaluation, {group: accuracy in [0, 1]} or None for n/a) from one results_table row, else None."""
    m = _TABLE_ROW.match(line.strip())
    if m is None:
        return None
    cells = m["cells"].split(" | ")
    if cells == ["n/a"] * len(GROUPS):
        return m["model"], m["eval"], None
    try:
        return m["model"], m["eval"], {g: float(c) / 100 for g, c in zip(GROUPS, cells)}
    except ValueError:  # the header row
        return None


def score_line(model: str, by: dict[str, dict | None], seconds: float) -> str:
    """The evaluate stage's line per model: "[evaluate] base: knn 0.8178 linear 0.8777 (27.9s)", top-1 per eval."""
    scores = " ".join(f"{e} {r['top1']:.4f}" for e, r in by.items() if r is not None)
    return f"[evaluate] {model}: {scores} ({seconds:.1f}s)"


def parse_score_line(line: str) -> tuple[str, dict[str, float]] | None:
    """(model, {evaluation: top-1 accuracy}) from one score_line, else None."""
    m = _SCORE_LINE.match(line.strip())
    if m is None:
        return None
    words = m["scores"].split()
    return m["model"], {e: float(v) for e, v in zip(words[::2], words[1::2])}


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
