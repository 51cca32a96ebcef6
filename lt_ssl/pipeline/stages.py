"""The pipeline's stages. Each reads its inputs under the run, writes under `<stage>/`, nothing else."""

from __future__ import annotations

import io
import math
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
from ..data.longtail import balanced_indices, class_groups, stratified_indices
from ..errors import DataError, StageError
from ..evaluate import (accuracy_report, assert_unchanged, extract_features, finetune, head_features, knn_predict,
                        linear_probe, pixel_encoder, state_snapshot)
from .. import methods
from ..methods import Batch, DistillStudent, Method
from ..models import build_backbone
from ..plots import accuracy_bars_png, class_distribution_png, cluster_scatter_png, tsne_png
from .. import pseudolabel as pl
from ..store import Store
from ..train import Checkpointer, load_checkpoint, train
from . import report
from .plan import CONFIG_STAGES, OPTIONAL
from .contract import (Outputs, check_needs, is_done, plan_of, read_config, run_methods, stage_prefix,
                       trained_models, write_config_once, write_output, write_success)


@dataclass
class Context:
    store: Store
    cfg: Config
    device: torch.device
    out: Outputs
    cluster: int | None = None
    metrics: object | None = None

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


def device_name(device: torch.device) -> str:
    """The hardware a stage ran on, for its success record: the GPU's name, else the CPU's model. A report groups
    cells by it, because the device (and the bf16 that CUDA steps run in) moves accuracies by as much as methods
    differ (docs/results.md)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"cpu: {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return device.type


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
    """The configured backbone on `device`, its weights channels_last on every device: on CPUs too, where the CNNs'
    float32 step is faster that way at the experiments' batch size and vit_tiny's is unchanged
    (benchmarks/train_step.py --contiguous; figures in benchmarks/README.md)."""
    return build_backbone(cfg.backbone).to(device).to(memory_format=torch.channels_last)


def new_method(cfg: Config, m: MethodConfig, device: torch.device) -> Method:
    """A freshly initialised method (backbone + heads) on `device`."""
    return methods.build(new_backbone(cfg, device), m).to(device)


def model_bytes(model: nn.Module, arch: str) -> bytes:
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "arch": arch}, buf)
    return buf.getvalue()


def load_model(store: Store, key: str, model: nn.Module, arch: str) -> nn.Module:
    state = load_checkpoint(store, key, arch)
    model.load_state_dict(state["model"])
    return model


def ssl_arch(cfg: Config, m: MethodConfig) -> str:
    """What a checkpoint must have been made by; head sizes are checked by load_state_dict itself."""
    return f"{m.name}/{cfg.backbone}"


def ssl_step(model: Method, cfg: Config, mean, std) -> Callable:
    """model.num_views independently augmented views of the same images (B,3,H,W) -> the method's outputs."""

    def step(x: Tensor, idx: Tensor, gen: torch.Generator, epoch: int, global_step: int, total_steps: int) -> dict:
        extra = model.augment_strength(idx)  # per-sample extra operations, or None
        views = [augment_batch(x, cfg.augment, mean, std, generator=gen, extra=extra)
                 for _ in range(model.num_views)]  # (B,3,S,S)
        if x.device.type == "cuda":
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        return model.loss(Batch(views, idx, epoch, global_step, total_steps))

    return step


def train_ssl(ctx: Context, model: Method, images: Tensor, tcfg: TrainConfig, m: MethodConfig, info: dict,
              positions: np.ndarray | None = None) -> dict:
    """Run the training loop for a self-supervised method and store the final weights as model.pt.

    positions: where `images` sit in the training subset (default: the whole subset, in order), to look up
    per-image inputs of other stages (pseudo-labels) for the methods that need them."""
    arch = ssl_arch(ctx.cfg, m)
    ckpt = Checkpointer(ctx.store, ctx.out.prefix, arch)
    if "pseudolabel" in model.needs_stages:
        labels = ctx.store.read_numpy("pseudolabel/labels.npy")
        model.set_pseudolabels(torch.from_numpy(labels if positions is None else labels[positions]))
    model.on_train_start(images.shape[0])  # before train() loads a checkpoint, which brings this run's state back
    result = train(model, model.param_groups(tcfg.lr), images, ssl_step(model, ctx.cfg, info["mean"], info["std"]),
                   tcfg, ckpt, seed=ctx.cfg.seed + _stage_seed(ctx), name=ctx.name, metrics=ctx.metrics,
                   collapse_std=model.collapse_std(), after_step=model.after_step, on_epoch_end=model.on_epoch_end,
                   epoch_order=model.epoch_order)
    ctx.out.bytes("model.pt", model_bytes(model, arch))
    return {"train": {"epochs": result.epochs, "steps": result.steps, "seconds": round(result.seconds, 2),
                      "step_seconds": round(result.step_seconds, 2), "final_loss": result.final_loss,
                      "images_per_second": round(result.images_per_second, 1)}}


def _stage_seed(ctx: Context) -> int:
    """Different stages draw different augmentations from the same run seed."""
    return {"pretrain": 1, "baseline": 2, "distill": 3}.get(ctx.out.prefix, 100 + (ctx.cluster or 0))


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
    wanted = plan_of(cfg).names
    ctx.out.json("stages.json", {s.name: s.name in wanted for s in OPTIONAL})  # Argo's `when` on optional stages
    print(f"[prepare] {cfg.data.dataset} {cfg.data.subset}: {info['subset_size']} of {info['num_images']} images, "
          f"classes {info['class_counts']}", file=sys.stderr)
    return {"subset_size": info["subset_size"]}


def pseudolabel(ctx: Context) -> dict:
    """Pseudo-labels for the training subset: a denoising autoencoder on its pixels, k-means on the codes
    (formulas and sources in lt_ssl/pseudolabel.py); labels.npy is aligned with prepare/subset.npy."""
    cfg = ctx.cfg
    settings = pl.settings(run_methods(cfg))
    arrays, subset, info = training_images(ctx)
    k = settings.pseudo_k
    if k > len(subset):
        raise StageError(f"method.pseudo_k={k} is larger than the number of training images ({len(subset)}); "
                         "lower method.pseudo_k")
    images = to_device(arrays.images[subset], ctx.device)
    dae, losses = pl.train_dae(images, settings, seed=cfg.seed + 5, name=ctx.name)
    codes = pl.latent_codes(dae, images)
    result = kmeans(codes, k, backend=cfg.cluster.backend, seed=cfg.seed, n_init=pl.KMEANS_N_INIT,
                    max_iter=pl.KMEANS_MAX_ITER)
    sizes = cluster_sizes(result.assignments, k)
    codes_np = codes.cpu().numpy().astype(np.float32)
    ctx.out.numpy("labels.npy", result.assignments.astype(np.int64))
    ctx.out.numpy("codes.npy", codes_np)
    ctx.out.bytes("dae.pt", model_bytes(dae, f"dae/{info['image_shape']}"))
    ctx.out.json("sizes.json", {"sizes": sizes, "inertia": result.inertia, "backend": result.backend,
                                "dae_mse_per_epoch": [round(v, 6) for v in losses]})
    keep, xy = pl.tsne_2d(codes_np, settings.tsne_points, cfg.seed)
    ctx.out.bytes("tsne.png", tsne_png(xy, arrays.labels[subset][keep],
                                       f"t-SNE of DAE codes ({len(keep)} images) by true class"))
    print(f"[pseudolabel] K={k} sizes {sizes} (DAE mse {losses[-1]:.5f})", file=sys.stderr)
    return {"k": k, "sizes": sizes, "dae_final_mse": losses[-1]}


def pretrain(ctx: Context) -> dict:
    """The base model of the configured method on the whole (imbalanced) training subset."""
    arrays, subset, info = training_images(ctx)
    torch.manual_seed(ctx.cfg.seed)
    model = new_method(ctx.cfg, ctx.cfg.method, ctx.device)
    return train_ssl(ctx, model, to_device(arrays.images[subset], ctx.device), ctx.cfg.pretrain, ctx.cfg.method, info)


def baseline(ctx: Context) -> dict:
    """A plain SSL model with the same epoch budget as the whole recipe, for a fair comparison."""
    b = ctx.cfg.baseline
    if not b.enabled:
        return {"enabled": False}
    arrays, subset, info = training_images(ctx)
    torch.manual_seed(ctx.cfg.seed + 2)
    model = new_method(ctx.cfg, b.method, ctx.device)
    return train_ssl(ctx, model, to_device(arrays.images[subset], ctx.device), b.train, b.method, info)


def base_model(ctx: Context) -> nn.Module:
    model = new_method(ctx.cfg, ctx.cfg.method, ctx.device)
    return load_model(ctx.store, "pretrain/model.pt", model, ssl_arch(ctx.cfg, ctx.cfg.method))


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
    print(f"[cluster] k={k} sizes {sizes} ({result.backend})", file=sys.stderr)
    return {"sizes": sizes, "clusters": ids}


def expert(ctx: Context) -> dict:
    """An expert of the configured method on one cluster's images, started from the base model (seed 000) or from scratch."""
    cfg, k = ctx.cfg, ctx.cluster
    ids = ctx.store.read_json("cluster/clusters.json")
    if k not in ids:
        raise StageError(f"expert --cluster {k} does not exist: the non-empty clusters are {ids}")
    arrays, subset, info = training_images(ctx)
    in_cluster = ctx.store.read_numpy("cluster/assignments.npy") == k
    members = subset[in_cluster]
    if len(members) < 2:
        raise StageError(f"cluster {k} has {len(members)} image(s), too few to train an expert; lower cluster.k")
    if cfg.expert.init == "base":
        model = base_model(ctx)
    else:
        torch.manual_seed(cfg.seed + 100 + k)
        model = new_method(cfg, cfg.method, ctx.device)
    result = train_ssl(ctx, model, to_device(arrays.images[members], ctx.device), cfg.expert.train, cfg.method, info,
                       positions=np.flatnonzero(in_cluster))
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
    ids = ctx.store.read_json("cluster/clusters.json")  # every expert is done: contract.check_needs ran first
    assignments = torch.from_numpy(ctx.store.read_numpy("cluster/assignments.npy")).to(ctx.device)
    base = base_model(ctx).backbone.eval()
    experts = {}
    for k in ids:
        m = new_method(cfg, cfg.method, ctx.device)
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

    def step(x: Tensor, idx: Tensor, gen: torch.Generator, epoch: int, global_step: int, total_steps: int) -> dict:
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
    return {"train": {"epochs": result.epochs, "seconds": round(result.seconds, 2),
                      "step_seconds": round(result.step_seconds, 2), "final_loss": result.final_loss}}


def evaluate(ctx: Context) -> dict:
    """kNN and linear probe on frozen features, trained per evaluate.protocol: on the full balanced training set
    (full_balanced) or on a balanced subset of it as large as the pre-training subset (balanced_subset); and the
    evaluate.extra_probes on the same probe training set: G-SimCLR's head_layers probes (P1, P2, ...) and finetune."""
    cfg, ev = ctx.cfg, ctx.cfg.evaluate
    info = ctx.store.read_json("prepare/info.json")
    train_set, test_set = load_arrays(cfg.data, train=True), load_arrays(cfg.data, train=False)
    x_train, x_test = to_device(train_set.images, ctx.device), to_device(test_set.images, ctx.device)
    y_train = torch.from_numpy(train_set.labels).to(ctx.device)
    y_test = torch.from_numpy(test_set.labels).to(ctx.device)
    C, groups = info["num_classes"], info["groups"]

    torch.manual_seed(cfg.seed + 7)
    models: dict[str, nn.Module] = {"random": new_backbone(cfg, ctx.device)}  # the floor every method must clear
    heads: dict[str, list[nn.Module]] = {}  # each SSL model's projection-head layers, for the head_layers probes
    base = base_model(ctx)
    models["base"], heads["base"] = base.backbone, base.projection_layers()
    trained = trained_models(cfg)  # evaluate what the run's plan trained
    if "student" in trained:
        student = DistillStudent(new_backbone(cfg, ctx.device), cfg.cluster.k + 1, models["base"].out_dim, cfg.distill.head_hidden)
        models["student"] = load_model(ctx.store, "distill/model.pt", student.to(ctx.device),
                                       f"distill/{cfg.backbone}/{cfg.cluster.k}").backbone
    if "baseline" in trained:
        b = load_model(ctx.store, "baseline/model.pt", new_method(cfg, cfg.baseline.method, ctx.device),
                       ssl_arch(cfg, cfg.baseline.method))
        models["baseline"], heads["baseline"] = b.backbone, b.projection_layers()
    models["pixels"] = pixel_encoder()  # the second floor: kNN and logistic regression on the normalised pixels
    if ev.protocol == "balanced_subset":  # the offline-clustering paper: the probe sees as many images as pre-training
        keep = torch.from_numpy(balanced_indices(train_set.labels, info["subset_size"], cfg.data.split)).to(ctx.device)
        x_train, y_train = x_train[keep], y_train[keep]
    # G-SimCLR's P_k: the features after the projection head without its final k layers, k = 1..L (P_L: the backbone).
    p_names = [f"linear_p{k}" for k in range(1, max(map(len, heads.values()), default=0) + 1)]
    if "finetune" in ev.extra_probes:  # the same labelled images for every model
        few_labels = stratified_indices(y_train.cpu().numpy(), ev.finetune.fraction, cfg.seed)
        few_labels = torch.from_numpy(few_labels).to(ctx.device)

    results: dict[str, dict] = {}
    not_applicable: dict[str, dict[str, str]] = {}
    for name, backbone in models.items():
        t0 = time.perf_counter()
        layers = heads.get(name, [])
        frozen = nn.ModuleList([backbone, *layers])
        before = state_snapshot(frozen)
        f_train = extract_features(backbone, x_train, info["mean"], info["std"], cfg.augment.size, ev.batch_size)
        f_test = extract_features(backbone, x_test, info["mean"], info["std"], cfg.augment.size, ev.batch_size)

        def linear(train_feats: Tensor, test_feats: Tensor) -> dict:
            preds = linear_probe(train_feats, y_train, test_feats, C, epochs=ev.linear_epochs, lr=ev.linear_lr,
                                 weight_decay=ev.linear_weight_decay, seed=cfg.seed)
            return accuracy_report(preds, y_test, C, groups)

        knn = knn_predict(f_train, y_train, f_test, C, k=ev.knn_k, temperature=ev.knn_temperature)
        results[name] = by = {"knn": accuracy_report(knn, y_test, C, groups), "linear": linear(f_train, f_test)}
        skipped = not_applicable.setdefault(name, {})
        if "head_layers" in ev.extra_probes:
            p_train = [f_train, *head_features(layers, f_train, ev.batch_size)]  # depth 0 (backbone) .. L
            p_test = [f_test, *head_features(layers, f_test, ev.batch_size)]
            for k, p in enumerate(p_names, start=1):
                depth = len(layers) - k
                if depth < 0:
                    by[p] = None
                    skipped[p] = f"its projection head has {len(layers)} layers" if layers else "no projection head"
                else:  # P_L is the backbone's own features: the linear row again, not fitted twice
                    by[p] = by["linear"] if depth == 0 else linear(p_train[depth], p_test[depth])
        if "finetune" in ev.extra_probes:
            if any(True for _ in backbone.parameters()):
                tuned = finetune(backbone, x_train[few_labels], y_train[few_labels], C, info["mean"], info["std"],
                                 cfg.augment.size, epochs=ev.finetune.epochs, lr=ev.finetune.lr,
                                 batch_size=ev.finetune.batch_size, linear_epochs=ev.linear_epochs,
                                 linear_lr=ev.linear_lr, linear_weight_decay=ev.linear_weight_decay,
                                 feature_batch_size=ev.batch_size, seed=cfg.seed)
                logits = extract_features(tuned, x_test, info["mean"], info["std"], cfg.augment.size, ev.batch_size)
                by["finetune"] = accuracy_report(logits.argmax(dim=1), y_test, C, groups)
            else:
                by["finetune"], skipped["finetune"] = None, "no encoder weights to fine-tune"
        assert_unchanged(frozen, before)  # evaluation must never train the encoder it scores (fine-tune trains a copy)
        if not skipped:
            del not_applicable[name]
        print(report.score_line(name, by, time.perf_counter() - t0), file=sys.stderr)

    metrics = {"config_hash": config_hash(cfg), "dataset": info["dataset"], "subset": info["subset"],
               "groups": groups, "protocol": ev.protocol, "probe_train_size": int(y_train.shape[0]), "models": results}
    if "finetune" in ev.extra_probes:
        metrics["finetune_train_size"] = int(few_labels.shape[0])
    if not_applicable:
        metrics["not_applicable"] = not_applicable  # why a model's probe is null in "models"
    ctx.out.json("metrics.json", metrics)
    ctx.out.bytes("accuracy.png", accuracy_bars_png({f"{m}/{e}": {g: r[g] for g in report.GROUPS}
                                                     for m, by in results.items() for e, r in by.items() if r is not None}))
    ctx.out.text("report.md", report.markdown(cfg, info, results, ctx.store))
    if ctx.metrics is not None:
        for model_name, by_eval in results.items():
            for evaluation, rep in by_eval.items():
                for group in ("top1", "many", "medium", "few"):
                    if rep is not None:
                        ctx.metrics.accuracy(model_name, "all" if group == "top1" else group, evaluation, rep[group])
    return {name: {e: r["top1"] if r is not None else None for e, r in by.items()} for name, by in results.items()}


# The stage functions by name; their graph (needs, fan-out, outputs) is declared in plan.py.
STAGES: dict[str, Callable[[Context], dict]] = {f.__name__: f for f in (
    prepare, pseudolabel, pretrain, baseline, cluster, expert, distill, evaluate)}


def run_stage(name: str, store: Store, cfg: Config | None, *, cluster: int | None = None, device: str | None = None,
              output_path: str | None = None) -> str:
    """The stage contract around one stage of the run's plan. Returns 'done' or 'skipped'.

    `output_path`: where to write the files Argo reads (the stage's `plan.Output`), if it has any."""
    if name not in STAGES:
        raise StageError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    if cfg is not None:  # only the stage that takes the config writes it; the others read it
        first = [s.name for s in plan_of(cfg).stages if s.takes_config]
        if name not in first:
            raise StageError(f"stage {name} reads the run's config.yaml; --config and overrides go to stage {first[0]}")
        write_config_once(store, cfg)
    elif name in CONFIG_STAGES:
        raise StageError(f"stage {name} needs --config (and optional key=value overrides)")
    cfg = read_config(store)
    plan = plan_of(cfg)
    if name not in plan.names:
        raise StageError(f"stage {name} is not in this run's plan {plan.name!r} ({' -> '.join(plan.names)})")
    stage = plan.stage(name)
    if stage.fan_out and cluster is None:
        raise StageError(f"--cluster K is required for stage {name}: it runs once per {stage.fan_out} id")
    if cluster is not None and not stage.fan_out:
        raise StageError(f"stage {name} takes no --cluster K: it runs once, not per cluster id")
    if output_path and not stage.output:
        raise StageError(f"stage {name} writes no files for Argo; drop the output option")
    chash = config_hash(cfg)
    prefix = stage_prefix(name, cluster)
    if is_done(store, prefix, chash):
        print(f"[{prefix}] already done for config {chash}; skipping", file=sys.stderr)
        if output_path:  # Argo reads a step's output parameters even when the step had nothing left to do
            write_output(stage.output, store, output_path)
        return "skipped"
    check_needs(store, plan, stage, chash)
    from ..metrics import StageMetrics

    run_id = store.uri.rstrip("/").rsplit("/", 1)[-1]
    metrics = StageMetrics(run_id, prefix.replace("/", "-"), cluster, cfg.metrics.pushgateway_url or None,
                           job=cfg.metrics.job, push_every=cfg.metrics.push_every)
    started = time.time()
    ctx = Context(store, cfg, pick_device(device or cfg.device), Outputs(store, prefix), cluster, metrics)
    summary = STAGES[name](ctx)
    metrics.stage_duration(time.time() - started)
    ctx.out.bytes("metrics.prom", metrics.exposition())
    metrics.push()
    write_success(ctx.out, chash, started, {"summary": summary, "device": str(ctx.device),
                                             "device_name": device_name(ctx.device)})
    if output_path:
        write_output(stage.output, store, output_path)
    return "done"
