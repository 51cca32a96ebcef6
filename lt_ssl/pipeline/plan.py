"""The stage graph as data: each stage declared once, each plan a graph of them.

The CLI's stage choices, the needs check of the stage contract, `lt-ssl runs`, the local runner
and the Argo rendering all read these declarations; a run picks its plan with the config key `plan`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# Where a pod writes the files Argo reads as output parameters; the local runner passes temp paths.
CLUSTERS_OUT = "/tmp/clusters.json"
OUTPUTS_DIR = "/tmp/outputs"


@dataclass(frozen=True)
class Output:
    """Files a stage writes outside the run, for Argo to read as output parameters.

    `fields` maps each parameter to a dotted path into the run's JSON `source`; one field with the
    path "" is the whole JSON, written to `path` itself; otherwise each field is a file in the folder
    `path`. They are copied from `source`, so a stage skipped as done writes them again."""

    flag: str  # the `lt-ssl stage` option that says where
    path: str
    source: str
    fields: tuple[tuple[str, str], ...]
    gauges: bool = False  # accuracies: exported as Prometheus gauges labelled by model and evaluation

    @property
    def is_file(self) -> bool:
        return len(self.fields) == 1 and self.fields[0][1] == ""

    def files(self) -> dict[str, str]:
        """Output parameter -> the pod path Argo reads it from."""
        if self.is_file:
            return {self.fields[0][0]: self.path}
        return {name: f"{self.path}/{name}" for name, _ in self.fields}


@dataclass(frozen=True)
class Stage:
    name: str
    needs: tuple[str, ...] = ()  # stages whose outputs it reads: each must be done first
    fan_out: str | None = None  # one task per id in this stage's output (a JSON list), in parallel
    accelerator: bool = True  # trains or extracts features: a GPU pod on Argo
    takes_config: bool = False  # writes the run's config.yaml: `--config` and overrides go to it
    output: Output | None = None
    # Runs only in runs whose config asks for it (a method's `needs_stages`): contract.plan_of drops it from the
    # others; Argo keeps it in the DAG and skips it (`when`) on the config stage's output parameter of its name.
    optional: bool = False


@dataclass(frozen=True)
class Plan:
    name: str
    stages: tuple[Stage, ...]  # in a topological order: the order the local runner runs them

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for s in self.stages:
            missing = [n for n in (*s.needs, *([s.fan_out] if s.fan_out else [])) if n not in seen]
            if missing:
                raise ValueError(f"plan {self.name}: stage {s.name} needs {missing}, which do not come before it")
            seen.add(s.name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    def for_run(self, wanted: frozenset[str] | set[str]) -> Plan:
        """The stages one run executes: the optional ones only if `wanted`, and no stage needing a dropped one."""
        drop = {s.name for s in self.stages if s.optional and s.name not in wanted}
        return Plan(self.name, tuple(replace(s, needs=tuple(n for n in s.needs if n not in drop))
                                     for s in self.stages if s.name not in drop))

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def depends(self, name: str) -> tuple[str, ...]:
        """The needs not already implied by another need: the DAG's edges, without redundant ones."""
        needs = self.stage(name).needs
        return tuple(n for n in needs if not any(n in self.ancestors(m) for m in needs if m != n))

    def ancestors(self, name: str) -> set[str]:
        """Every stage `name` needs, directly or through another."""
        out: set[str] = set()
        for n in self.stage(name).needs:
            out |= {n} | self.ancestors(n)
        return out


def headline(models: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """The evaluate stage's top-1 accuracies that Argo exports, e.g. knn_top1_base."""
    return tuple((f"{e}_top1_{m}", f"models.{m}.{e}.top1") for e in ("knn", "linear") for m in models)


# Pseudo-labels per training image (G-SimCLR's denoising autoencoder + k-means), for the methods that train on them.
PSEUDOLABEL = Stage("pseudolabel", ("prepare",), optional=True)
OPTIONAL = (PSEUDOLABEL,)
# prepare also says which optional stages the run wants: Argo's `when` reads it (prepare/stages.json: name -> bool).
PREPARE = Stage("prepare", accelerator=False, takes_config=True,
                output=Output("--outputs-dir", OUTPUTS_DIR, "prepare/stages.json", tuple((s.name, s.name) for s in OPTIONAL)))
PRETRAIN = Stage("pretrain", ("prepare", "pseudolabel"))
BASELINE = Stage("baseline", ("prepare", "pseudolabel"))  # a no-op unless baseline.enabled; always present keeps the DAG static
CLUSTER = Stage("cluster", ("pretrain",), output=Output("--clusters-out", CLUSTERS_OUT, "cluster/clusters.json",
                                                        (("clusters", ""),)))
EXPERT = Stage("expert", ("cluster", "pseudolabel"), fan_out="cluster")
DISTILL = Stage("distill", ("cluster", "expert"))  # reads the assignments and every expert
EVALUATE = Stage("evaluate", ("pretrain",),
                 output=Output("--outputs-dir", OUTPUTS_DIR, "evaluate/metrics.json", headline(("base",)), gauges=True))

PLANS: dict[str, Plan] = {
    # The offline-clustering recipe: base model, k-means, one expert per cluster, a distilled student.
    "recipe": Plan("recipe", (PREPARE, PSEUDOLABEL, PRETRAIN, BASELINE, CLUSTER, EXPERT, DISTILL, replace(
        EVALUATE, needs=("pretrain", "baseline", "distill"),
        output=replace(EVALUATE.output, fields=headline(("student", "base")))))),
    # The configured method alone, evaluated as the base model.
    "plain": Plan("plain", (PREPARE, PSEUDOLABEL, PRETRAIN, EVALUATE)),
}

# Every stage of every plan, in a plan's order: what `lt-ssl stage` accepts.
STAGE_NAMES: tuple[str, ...] = tuple(dict.fromkeys(n for p in PLANS.values() for n in p.names))
CONFIG_STAGES = frozenset(s.name for p in PLANS.values() for s in p.stages if s.takes_config)
# Each output option of `lt-ssl stage`, with the stages that take it.
OUTPUT_FLAGS: dict[str, frozenset[str]] = {
    flag: frozenset(s.name for p in PLANS.values() for s in p.stages if s.output and s.output.flag == flag)
    for flag in dict.fromkeys(s.output.flag for p in PLANS.values() for s in p.stages if s.output)}


def stage_argv(stage: Stage, run_uri: str, *, cluster: int | str | None = None, config: str | None = None,
               overrides: list[str] = (), output_path: str | None = None) -> list[str]:
    """The exact `lt-ssl stage ...` command for one step of a plan."""
    argv = ["lt-ssl", "stage", stage.name, "--run", run_uri]
    if stage.takes_config:
        argv += ["--config", config or "", *overrides]
    if stage.fan_out:
        argv += ["--cluster", str(cluster)]
    if stage.output:
        argv += [stage.output.flag, output_path or stage.output.path]
    return argv
