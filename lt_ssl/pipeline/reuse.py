"""A run takes another run's finished training stages instead of training the same models again.

Two runs whose configs differ only in how their models are probed (config.EVALUATE_ONLY: the protocol, the kNN
and linear-probe settings, the extra probes) train the same models. reuse_stages copies the finished stages a
new run's evaluate needs from such a donor run, and the new run then evaluates its own way: a G-SimCLR P1/P2/P3
or fine-tune evaluation of an experiment's cells costs an evaluate stage per cell, not a training run.

What a copy is, so that every other part of the stage contract holds unchanged:
- the donor's stage outputs, checkpoints left out, then its `_SUCCESS.json` last, with this run's config hash (the
  stage did this run's work: nothing it read differs) and `reused_from` (the donor run and its config hash); its
  provenance, device and seconds stay the donor's, which are the work's;
- all of a stage or none of it (a fan-out stage: every task), in plan order, stopping at the first stage the
  donor has not finished or this run has begun itself (nothing of this run's is overwritten);
- only from one donor, and only into a run with no training stage of its own before them: stages that read
  each other's outputs come from the same run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from ..config import Config, config_hash, training_hash
from ..errors import ConfigError, StageError
from ..store import Store, open_store
from .contract import CONFIG_KEY, SUCCESS, fan_out_ids, is_done, plan_of, read_config, stage_prefix, write_config_once

REUSED = "reused_from"  # the _SUCCESS.json field that marks a copied stage


def stages_before_evaluate(cfg: Config) -> list[str]:
    """The stages whose work the evaluate stage reads, in plan order: what a run may take from a donor."""
    plan = plan_of(cfg)
    needed = plan.ancestors("evaluate")
    return [name for name in plan.names if name in needed]


class Reused(NamedTuple):
    donor: str | None  # the run the stages came from
    tasks: list[str]  # the stage task prefixes copied ("pretrain", "expert/0"), in plan order


def reuse_stages(store: Store, cfg: Config, donors: Sequence[str]) -> Reused:
    """Copy into the run at `store` (config `cfg`) the finished training stages of the first donor run (run URIs)
    whose config has cfg's training_hash and has any stage this run lacks."""
    want, chash = training_hash(cfg), config_hash(cfg)
    for uri in donors:
        donor = open_store(uri)
        if donor.uri.rstrip("/") == store.uri.rstrip("/") or not donor.exists(CONFIG_KEY):
            continue
        try:
            donor_cfg = read_config(donor)
        except (ConfigError, StageError):  # another version's config: not comparable
            continue
        if training_hash(donor_cfg) != want:
            continue
        copied = _copy_finished(donor, config_hash(donor_cfg), store, cfg, chash)
        if copied:
            return Reused(donor.uri, copied)
    return Reused(None, [])


def _copy_finished(donor: Store, donor_hash: str, store: Store, cfg: Config, chash: str) -> list[str]:
    plan, copied = plan_of(cfg), []
    for name in stages_before_evaluate(cfg):
        mine = store.list(name)
        if mine:  # taken from this donor before (a rerun): go on; anything else is this run's own work: stop there,
            # so that no stage of this run reads a stage of another run's
            records = [store.read_json(k) for k in mine if k.endswith(f"/{SUCCESS}")]
            if records and all((r.get(REUSED) or {}).get("run") == donor.uri for r in records):
                continue
            break
        stage = plan.stage(name)
        tasks = ([stage_prefix(name, k) for k in fan_out_ids(donor, plan, stage)] if stage.fan_out
                 else [stage_prefix(name)])
        if not all(is_done(donor, task, donor_hash) for task in tasks):
            break  # the rest must be trained here
        write_config_once(store, cfg)
        for task in tasks:
            keys = [k for k in donor.list(task) if "/ckpt/" not in f"/{k}" and not k.endswith(f"/{SUCCESS}")]
            for key in keys:
                store.write_bytes(key, donor.read_bytes(key))
            record = donor.read_json(f"{task}/{SUCCESS}")
            record.update(config_hash=chash, **{REUSED: {"run": donor.uri, "config_hash": donor_hash}})
            store.write_json(f"{task}/{SUCCESS}", record)
            copied.append(task)
    return copied
