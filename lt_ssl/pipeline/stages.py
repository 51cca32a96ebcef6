"""The pipeline's stages. Each reads its inputs under the run, writes under `<stage>/`, nothing else."""

from __future__ import annotations

import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cluster import cluster_sizes, kmeans, nonempty_clusters
from ..config import Config, MethodConfig, TrainConfig, config_hash
from ..data.augment import augment_batch
from ..data.datasets import Arrays, group_counts, load_arrays, select_subset
from ..data.longtail import balanced_indices, class_groups
from ..errors import DataError, StageError
from ..evaluate import (accuracy_report, assert_unchanged, extract_features, knn_predict, linear_probe, pixel_encoder,
                        state_snapshot)
from ..methods import DistillStudent, build_method
from ..models import build_backbone
from ..plots import accuracy_bars_png, class_distribution_png, cluster_scatter_png
from ..store import Store
from ..train import Checkpointer, healthy_std, load_checkpoint, train
from . import report
from .contract import Outputs, is_done, read_config, stage_prefix, write_config_once, write_success

# The evaluate stage's headline numbers, also written one per file for Argo output parameters.
HEADLINE = ("knn_top1_student", "knn_top1_base", "linear_top1_student", "linear_top1_base")


@dataclass
class Context:
    store: Store
    cfg: Config
    device: torch.device
    out: Outputs
    cluster: int | None = None
    metrics: object | None = None
    clusters_out: str | None = None
    outputs_dir: str | None = None

    @property
    def name(self) -> str:
        return self.out.prefix.replace("/", "-")


# --------------------------------------------------------------------------------------------- helpers


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise StageError(f"device {name!r} asked for, but no CUDA device is visible; use --device cpu")
    return torch.device(name)


def training_images(ctx: Context) -> tuple[Arrays, np.ndarray, dict]:
    """The run's training arrays, its subset indices and prepare's info (mean/std, groups)."""
    arrays = load_arrays(ctx.cfg.data, train=True)
    subset = ctx.store.read_numpy("prepare/subset.npy")
    info = ctx.store.read_json("prepare/info.json")
    if info["num_images"] != len(arrays.labels):
        raise StageError(f"the dataset at data.root now has {len(arrays.labels)} images, the run was prepared with "
                         f"{info['num_images']}; point data.root at the original data or start a new run")
    return arrays, subset, info


def to_device(images: np.ndarray, device: torch.device) -> Tensor:
    """The dataset lives as one uint8 tensor on the training device: no loader, no per-image Python."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def new_backbone(cfg: Config, device: torch.device) -> nn.Module:
    model = build_backbone(cfg.backbone).to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def method_kwargs(m: MethodConfig) -> dict:
    if m.name == "simsiam":
        return {"proj_dim": m.proj_dim, "pred_hidden": m.pred_hidden, "proj_layers": m.proj_layers}
    kwargs = {"proj_dim": m.proj_dim, "proj_hidden": m.proj_hidden}
    return kwargs | ({"temperature": m.temperature} if m.temperature else {})


def model_bytes(model: nn.Module, arch: str) -> bytes:
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "arch": arch}, buf)
    return buf.getvalue()


def load_model(store: Store, key: str, model: nn.Module, arch: str) -> nn.Module:
    state = load_checkpoint(store, key, arch)
    model.load_state_dict(state["model"])
    return model


def ssl_arch(cfg: Config, m: MethodConfig) -> str:
    return f"{m.name}/{cfg.backbone}/{m.proj_dim}"


def ssl_step(model: nn.Module, cfg: Config, mean, std) -> Callable:
    """Two independently augmented views of the same images (B,3,H,W) -> the method's outputs."""

    def step(x: Tensor, idx: Tensor, gen: torch.Generator) -> dict:
        x1 = augment_batch(x, cfg.augment, mean, std, generator=gen)  # (B,3,S,S)
        x2 = augment_batch(x, cfg.augment, mean, std, generator=gen)
        if x.device.type == "cuda":
            x1, x2 = x1.contiguous(memory_format=torch.channels_last), x2.contiguous(memory_format=torch.channels_last)
        return model(x1, x2)

    return step


def train_ssl(ctx: Context, model: nn.Module, images: Tensor, tcfg: TrainConfig, m: MethodConfig, info: dict) -> dict:
    """Run the training loop for a self-supervised method and store the final weights as model.pt."""
    arch = ssl_arch(ctx.cfg, m)
    ckpt = Checkpointer(ctx.store, ctx.out.prefix, arch)
    collapse = 0.02 * healthy_std(m.proj_dim) if m.name == "simsiam" else 0.0
    result = train(model, model.param_groups(tcfg.lr), images, ssl_step(model, ctx.cfg, info["mean"], info["std"]),
                   tcfg, ckpt, seed=ctx.cfg.seed + _stage_seed(ctx), name=ctx.name, metrics=ctx.metrics,
                   collapse_std=collapse)
    ctx.out.bytes("model.pt", model_bytes(model, arch))
    return {"train": {"epochs": result.epochs, "steps": result.steps, "seconds": round(result.seconds, 2),
                      "final_loss": result.final_loss, "images_per_second": round(result.images_per_second, 1)}}


def _stage_seed(ctx: Context) -> int:
    """Different stages draw different augmentations from the same run seed."""
    return {"pretrain": 1, "baseline": 2, "distill": 3}.get(ctx.out.prefix, 100 + (ctx.cluster or 0))


def write_clusters_out(path: str, ids: list[int]) -> None:
    """The non-empty cluster ids as a JSON list: the output parameter Argo's withParam fans out over."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(ids, f, separators=(",", ":"))


def write_headline(outputs_dir: str, results: dict) -> None:
    """One file per headline accuracy: Argo output parameters that feed the template gauges."""
    os.makedirs(outputs_dir, exist_ok=True)
    for key in HEADLINE:
        evaluation, _, model_name = key.split("_")
        with open(os.path.join(outputs_dir, key), "w") as f:
            f.write(f"{results[model_name][evaluation]['top1']:.6f}")


# ---------------------------------------------------------------------------------------------- stages


def prepare(ctx: Context) -> dict:
    """Load the dataset, pick the (long-tailed) training subset, record counts, groups and statistics."""
    cfg = ctx.cfg
    arrays = load_arrays(cfg.data, train=True)
    test = load_arrays(cfg.data, train=False)
    subset = select_subset(cfg.data, arrays.labels, arrays.num_classes)
    counts = np.bincount(arrays.labels[subset], minlength=arrays.num_classes).tolist()
    groups_by = group_counts(cfg.data, arrays.labels, subset, arrays.num_classes)
    pixels = arrays.images[subset].astype(np.float64) / 255.0
    info = {
        "dataset": cfg.data.dataset,
        "num_images": int(len(arrays.labels)),
        "num_test_images": int(len(test.labels)),
        "num_classes": arrays.num_classes,
        "image_shape": list(arrays.images.shape[1:]),
        "subset": cfg.data.subset,
        "subset_size": int(len(subset)),
        "class_counts": counts,
        "group_counts": groups_by,
        "groups": class_groups(groups_by),
        "mean": pixels.mean(axis=(0, 2, 3)).round(6).tolist(),
        "std": pixels.std(axis=(0, 2, 3)).round(6).tolist(),
    }
    if min(info["std"]) <= 0:  # normalising by it would fail in every later stage
        raise DataError(f"the {cfg.data.dataset} training images have zero pixel variance (per-channel std {info['std']}): "
                        "they are blank or constant; check data.root and the files")
    ctx.out.numpy("subset.npy", subset)
    ctx.out.json("info.json", info)
    print(f"[prepare] {cfg.data.dataset} {cfg.data.subset}: {info['subset_size']} of {info['num_images']} images, "
          f"classes {info['class_counts']}", file=sys.stderr)
    return {"subset_size": info["subset_size"]}


def pretrain(ctx: Context) -> dict:
    """The base SimSiam model on the whole (imbalanced) training subset."""
    arrays, subset, info = training_images(ctx)
    torch.manual_seed(ctx.cfg.seed)
    model = build_method(ctx.cfg.method.name, new_backbone(ctx.cfg, ctx.device), **method_kwargs(ctx.cfg.method)).to(ctx.device)
    return train_ssl(ctx, model, to_device(arrays.images[subset], ctx.device), ctx.cfg.pretrain, ctx.cfg.method, info)


def baseline(ctx: Context) -> dict:
    """A plain SSL model with the same epoch budget as the whole recipe, for a fair comparison."""
    b = ctx.cfg.baseline
    if not b.enabled:
        return {"enabled": False}
    arrays, subset, info = training_images(ctx)
    torch.manual_seed(ctx.cfg.seed + 2)
    model = build_method(b.method.name, new_backbone(ctx.cfg, ctx.device), **method_kwargs(b.method)).to(ctx.device)
    return train_ssl(ctx, model, to_device(arrays.images[subset], ctx.device), b.train, b.method, info)


def base_model(ctx: Context) -> nn.Module:
    model = build_method(ctx.cfg.method.name, new_backbone(ctx.cfg, ctx.device), **method_kwargs(ctx.cfg.method))
    return load_model(ctx.store, "pretrain/model.pt", model.to(ctx.device), ssl_arch(ctx.cfg, ctx.cfg.method))


def cluster(ctx: Context) -> dict:
    """k-means on the base model's L2-normalised features; the non-empty cluster ids drive the fan-out."""
    cfg = ctx.cfg
    arrays, subset, info = training_images(ctx)
    k = cfg.cluster.k
    if k > len(subset):
        raise StageError(f"cluster.k={k} is larger than the number of training images ({len(subset)}); lower cluster.k")
    backbone = base_model(ctx).backbone
    feats = F.normalize(extract_features(backbone, to_device(arrays.images[subset], ctx.device), info["mean"],
                                         info["std"], cfg.augment.size, cfg.evaluate.batch_size), dim=1)
    result = kmeans(feats, k, backend=cfg.cluster.backend, seed=cfg.seed, n_init=cfg.cluster.n_init,
                    max_iter=cfg.cluster.max_iter)
    sizes = cluster_sizes(result.assignments, k)
    ids = nonempty_clusters(result.assignments, k)
    ctx.out.numpy("assignments.npy", result.assignments.astype(np.int64))
    ctx.out.numpy("centroids.npy", result.centroids)
    ctx.out.json("sizes.json", {"sizes": sizes, "inertia": result.inertia, "backend": result.backend})
    ctx.out.json("clusters.json", ids)
    labels = arrays.labels[subset]
    ctx.out.bytes("scatter.png", cluster_scatter_png(feats.cpu(), result.assignments, labels))
    ctx.out.bytes("class_distribution.png", class_distribution_png(labels, result.assignments, info["num_classes"], k))
    if ctx.clusters_out:  # Argo reads this file as the output parameter that withParam fans out over
        write_clusters_out(ctx.clusters_out, ids)
    print(f"[cluster] k={k} sizes {sizes} ({result.backend})", file=sys.stderr)
    return {"sizes": sizes, "clusters": ids}


def expert(ctx: Context) -> dict:
    """A SimSiam expert on one cluster's images, started from the base model (seed 000) or from scratch."""
    cfg, k = ctx.cfg, ctx.cluster
    ids = ctx.store.read_json("cluster/clusters.json")
    if k not in ids:
        raise StageError(f"expert --cluster {k} does not exist: the non-empty clusters are {ids}")
    arrays, subset, info = training_images(ctx)
    members = subset[ctx.store.read_numpy("cluster/assignments.npy") == k]
    if len(members) < 2:
        raise StageError(f"cluster {k} has {len(members)} image(s), too few to train an expert; lower cluster.k")
    if cfg.expert.init == "base":
        model = base_model(ctx)
    else:
        torch.manual_seed(cfg.seed + 100 + k)
        model = build_method(cfg.method.name, new_backbone(cfg, ctx.device), **method_kwargs(cfg.method)).to(ctx.device)
    result = train_ssl(ctx, model, to_device(arrays.images[members], ctx.device), cfg.expert.train, cfg.method, info)
    return result | {"cluster": k, "images": int(len(members))}


def _teacher_targets(backbone: nn.Module, x: Tensor) -> Tensor:
    """Teacher features, L2-normalised (the geometry kNN uses) and scaled by sqrt(D) so targets are O(1)."""
    with torch.no_grad():
        q = backbone(x).float()
    return F.normalize(q, dim=1) * math.sqrt(q.shape[1])


def distill(ctx: Context) -> dict:
    """One student regressing the base model and each image's own expert: K+1 heads, MSE (seed 000 Eq. 2)."""
    cfg = ctx.cfg
    arrays, subset, info = training_images(ctx)
    ids = ctx.store.read_json("cluster/clusters.json")
    missing = [k for k in ids if not is_done(ctx.store, stage_prefix("expert", k), config_hash(cfg))]
    if missing:
        raise StageError(f"distill needs every expert; experts {missing} are not done: run `lt-ssl stage expert --cluster K` for them")
    assignments = torch.from_numpy(ctx.store.read_numpy("cluster/assignments.npy")).to(ctx.device)
    base = base_model(ctx).backbone.eval()
    experts = {}
    for k in ids:
        m = build_method(cfg.method.name, new_backbone(cfg, ctx.device), **method_kwargs(cfg.method)).to(ctx.device)
        experts[k] = load_model(ctx.store, f"expert/{k}/model.pt", m, ssl_arch(cfg, cfg.method)).backbone.eval()
    for teacher in (base, *experts.values()):
        teacher.requires_grad_(False)

    torch.manual_seed(cfg.seed + 3)
    if cfg.distill.init == "base":
        student_backbone = base_model(ctx).backbone
    else:
        student_backbone = new_backbone(cfg, ctx.device)
    # Head k+1 serves expert k; empty clusters keep an unused head so ids stay positional.
    student = DistillStudent(student_backbone, cfg.cluster.k + 1, base.out_dim, cfg.distill.head_hidden).to(ctx.device)
    mean, std = info["mean"], info["std"]

    def step(x: Tensor, idx: Tensor, gen: torch.Generator) -> dict:
        view = augment_batch(x, cfg.augment, mean, std, generator=gen)  # one view (B,3,S,S)
        cid = assignments[idx]  # (B,) each image's cluster
        t_base = _teacher_targets(base, view)  # (B,D)
        t_exp = torch.empty_like(t_base)
        for k, teacher in experts.items():  # each image goes through its own expert only
            mask = cid == k
            if mask.any():
                t_exp[mask] = _teacher_targets(teacher, view[mask])
        return {"loss": student.loss(view, cid, t_base, t_exp)}

    arch = f"distill/{cfg.backbone}/{cfg.cluster.k}"
    ckpt = Checkpointer(ctx.store, ctx.out.prefix, arch)
    result = train(student, student.param_groups(cfg.distill.train.lr), to_device(arrays.images[subset], ctx.device),
                   step, cfg.distill.train, ckpt, seed=cfg.seed + 3, name=ctx.name, metrics=ctx.metrics)
    ctx.out.bytes("model.pt", model_bytes(student, arch))
    return {"train": {"epochs": result.epochs, "seconds": round(result.seconds, 2), "final_loss": result.final_loss}}


def evaluate(ctx: Context) -> dict:
    """kNN and linear probe on frozen features, trained per evaluate.protocol: on the full balanced training set
    (full_balanced) or on a balanced subset of it as large as the pre-training subset (balanced_subset)."""
    cfg, ev = ctx.cfg, ctx.cfg.evaluate
    info = ctx.store.read_json("prepare/info.json")
    train_set, test_set = load_arrays(cfg.data, train=True), load_arrays(cfg.data, train=False)
    x_train, x_test = to_device(train_set.images, ctx.device), to_device(test_set.images, ctx.device)
    y_train = torch.from_numpy(train_set.labels).to(ctx.device)
    y_test = torch.from_numpy(test_set.labels).to(ctx.device)
    C, groups = info["num_classes"], info["groups"]

    torch.manual_seed(cfg.seed + 7)
    models: dict[str, nn.Module] = {"random": new_backbone(cfg, ctx.device)}  # the floor every method must clear
    models["base"] = base_model(ctx).backbone
    student = DistillStudent(new_backbone(cfg, ctx.device), cfg.cluster.k + 1, models["base"].out_dim, cfg.distill.head_hidden)
    models["student"] = load_model(ctx.store, "distill/model.pt", student.to(ctx.device),
                                   f"distill/{cfg.backbone}/{cfg.cluster.k}").backbone
    if cfg.baseline.enabled:
        b = build_method(cfg.baseline.method.name, new_backbone(cfg, ctx.device), **method_kwargs(cfg.baseline.method))
        models["baseline"] = load_model(ctx.store, "baseline/model.pt", b.to(ctx.device),
                                        ssl_arch(cfg, cfg.baseline.method)).backbone
    models["pixels"] = pixel_encoder()  # the second floor: kNN and logistic regression on the normalised pixels
    if ev.protocol == "balanced_subset":  # the offline-clustering paper: the probe sees as many images as pre-training
        keep = torch.from_numpy(balanced_indices(train_set.labels, info["subset_size"], cfg.data.split)).to(ctx.device)
        x_train, y_train = x_train[keep], y_train[keep]

    results: dict[str, dict] = {}
    for name, backbone in models.items():
        t0 = time.perf_counter()
        before = state_snapshot(backbone)
        f_train = extract_features(backbone, x_train, info["mean"], info["std"], cfg.augment.size, ev.batch_size)
        f_test = extract_features(backbone, x_test, info["mean"], info["std"], cfg.augment.size, ev.batch_size)
        knn = knn_predict(f_train, y_train, f_test, C, k=ev.knn_k, temperature=ev.knn_temperature)
        lin = linear_probe(f_train, y_train, f_test, C, epochs=ev.linear_epochs, lr=ev.linear_lr,
                           weight_decay=ev.linear_weight_decay, seed=cfg.seed)
        assert_unchanged(backbone, before)  # evaluation must never train the encoder it scores
        results[name] = {"knn": accuracy_report(knn, y_test, C, groups), "linear": accuracy_report(lin, y_test, C, groups)}
        print(f"[evaluate] {name}: knn {results[name]['knn']['top1']:.4f} linear {results[name]['linear']['top1']:.4f} "
              f"({time.perf_counter() - t0:.1f}s)", file=sys.stderr)

    metrics = {"config_hash": config_hash(cfg), "dataset": info["dataset"], "subset": info["subset"],
               "groups": groups, "protocol": ev.protocol, "probe_train_size": int(y_train.shape[0]), "models": results}
    ctx.out.json("metrics.json", metrics)
    ctx.out.bytes("accuracy.png", accuracy_bars_png({f"{m}/{e}": {g: r[g] for g in report.GROUPS} for m, by in results.items() for e, r in by.items()}))
    ctx.out.text("report.md", report.markdown(cfg, info, results, ctx.store))
    if ctx.metrics is not None:
        for model_name, by_eval in results.items():
            for evaluation, rep in by_eval.items():
                for group in ("top1", "many", "medium", "few"):
                    ctx.metrics.accuracy(model_name, "all" if group == "top1" else group, evaluation, rep[group])
    if ctx.outputs_dir:
        write_headline(ctx.outputs_dir, results)
    return {name: {e: r["top1"] for e, r in by.items()} for name, by in results.items()}


STAGES: dict[str, Callable[[Context], dict]] = {
    "prepare": prepare,
    "pretrain": pretrain,
    "baseline": baseline,
    "cluster": cluster,
    "expert": expert,
    "distill": distill,
    "evaluate": evaluate,
}

# Inputs each stage reads (their _SUCCESS.json must exist for this config).
NEEDS: dict[str, tuple[str, ...]] = {
    "prepare": (),
    "pretrain": ("prepare",),
    "baseline": ("prepare",),
    "cluster": ("pretrain",),
    "expert": ("cluster",),
    "distill": ("cluster",),
    "evaluate": ("pretrain", "baseline", "distill"),
}


def run_stage(name: str, store: Store, cfg: Config | None, *, cluster: int | None = None, device: str | None = None,
              clusters_out: str | None = None, outputs_dir: str | None = None) -> str:
    """The stage contract around one stage. Returns 'done' or 'skipped'."""
    if name not in STAGES:
        raise StageError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    if (name == "expert") != (cluster is not None):
        raise StageError("--cluster K is required for the expert stage and only for it")
    if name == "prepare":
        if cfg is None:
            raise StageError("stage prepare needs --config (and optional key=value overrides)")
        write_config_once(store, cfg)
    cfg = read_config(store)
    chash = config_hash(cfg)
    prefix = stage_prefix(name, cluster)
    if is_done(store, prefix, chash):
        print(f"[{prefix}] already done for config {chash}; skipping", file=sys.stderr)
        # Argo reads a step's output parameters even when the step had nothing left to do.
        if clusters_out and name == "cluster":
            write_clusters_out(clusters_out, store.read_json("cluster/clusters.json"))
        if outputs_dir and name == "evaluate":
            write_headline(outputs_dir, store.read_json("evaluate/metrics.json")["models"])
        return "skipped"
    for need in NEEDS[name]:
        if not is_done(store, need, chash):
            raise StageError(f"stage {name} needs stage {need!r} to be done first in {store.uri}; run `lt-ssl stage {need} --run {store.uri}`")
    from ..metrics import StageMetrics

    run_id = store.uri.rstrip("/").rsplit("/", 1)[-1]
    metrics = StageMetrics(run_id, prefix.replace("/", "-"), cluster, cfg.metrics.pushgateway_url or None,
                           job=cfg.metrics.job, push_every=cfg.metrics.push_every)
    started = time.time()
    ctx = Context(store, cfg, pick_device(device or cfg.device), Outputs(store, prefix), cluster, metrics,
                  clusters_out, outputs_dir)
    summary = STAGES[name](ctx)
    metrics.stage_duration(time.time() - started)
    ctx.out.bytes("metrics.prom", metrics.exposition())
    metrics.push()
    write_success(ctx.out, chash, started, {"summary": summary, "device": str(ctx.device)})
    return "done"
