"""The pipeline as data: which stage runs after which. The local runner and the Argo DAG both read it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    stage: str
    depends: tuple[str, ...] = ()
    fan_out: bool = False  # one task per non-empty cluster id, in parallel


PIPELINE: tuple[Step, ...] = (
    Step("prepare"),
    Step("pretrain", ("prepare",)),
    Step("baseline", ("prepare",)),  # a no-op unless baseline.enabled; always present keeps the DAG static
    Step("cluster", ("pretrain",)),
    Step("expert", ("cluster",), fan_out=True),
    Step("distill", ("expert",)),
    Step("evaluate", ("distill", "baseline")),
)

# Files a pod writes for Argo to read as output parameters; the local runner passes the same flags.
CLUSTERS_OUT = "/tmp/clusters.json"
OUTPUTS_DIR = "/tmp/outputs"


def stage_argv(stage: str, run_uri: str, *, cluster: int | None = None, config: str | None = None,
               overrides: list[str] = (), clusters_out: str = CLUSTERS_OUT, outputs_dir: str = OUTPUTS_DIR) -> list[str]:
    """The exact `lt-ssl stage ...` command for one step of the pipeline."""
    argv = ["lt-ssl", "stage", stage, "--run", run_uri]
    if stage == "prepare":
        argv += ["--config", config or "", *overrides]
    if cluster is not None:
        argv += ["--cluster", str(cluster)]
    if stage == "cluster":
        argv += ["--clusters-out", clusters_out]
    if stage == "evaluate":
        argv += ["--outputs-dir", outputs_dir]
    return argv


def commands(run_uri: str, config: str, overrides: list[str], cluster_ids: list[int], **paths) -> list[list[str]]:
    """Every stage command of one run, in the local runner's order (a topological order of PIPELINE)."""
    out = []
    for step in PIPELINE:
        ids = cluster_ids if step.fan_out else [None]
        out += [stage_argv(step.stage, run_uri, cluster=k, config=config, overrides=overrides, **paths) for k in ids]
    return out
