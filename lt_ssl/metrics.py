"""Prometheus metrics of one stage process: a private registry, pushed to a Pushgateway, also
written next to the stage's outputs as `metrics.prom` (text exposition format).

    m = StageMetrics(run_id, "expert", cluster=2)          # PUSHGATEWAY_URL from the environment
    m.progress(epoch, step, loss, images_per_second, lr)   # pushes on the 1st call and every push_every
    m.accuracy("student", "few", "knn", 0.41)
    m.stage_duration(812.5)
    m.push()                                               # at the end of the stage
    store.write_bytes("expert/2/metrics.prom", m.exposition())

Series (Prometheus naming: one `lt_ssl_` prefix, base units, `_ratio` for 0..1; every label has a
handful of values, no ids or paths except the `run` grouping label):

    lt_ssl_train_epoch / _step / _loss / _images_per_second / _learning_rate {stage, cluster}
    lt_ssl_eval_accuracy_ratio {model, group, evaluation}
    lt_ssl_stage_duration_seconds {stage, cluster}

Grouping on the Pushgateway: {job, run, stage} plus {cluster} for expert stages (never
`instance`: a pod's address would leave a new group behind on every retry, and groups never
expire). The Pushgateway overwrites a metric's label with the grouping label of the same name, so
the grouping uses the same `stage` and `cluster` values the series carry (stage="expert",
cluster="2"), and parallel experts still land in distinct groups. Scrape the Pushgateway with
`honor_labels: true` so these labels survive.
"""

from __future__ import annotations

import logging
import os
import time

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import push_to_gateway

log = logging.getLogger(__name__)

_PUSH_TIMEOUT_S = 5.0  # a slow gateway must not stall training
_RETRY_AFTER_FAILURE_S = 60.0  # periodic pushes pause this long after a failed one


class StageMetrics:
    """The metrics of one stage run (one process). Thread-safe for setting; push from one thread."""

    def __init__(
        self,
        run_id: str,
        stage: str,
        cluster: int | None = None,
        pushgateway_url: str | None = None,
        job: str = "lt_ssl",
        push_every: int = 50,
    ):
        if not run_id or "/" in run_id:
            raise ValueError(f"run_id {run_id!r} must be a non-empty name without '/'")
        if not stage or "/" in stage:
            raise ValueError(f"stage {stage!r} must be a non-empty name without '/'")
        self.run_id = run_id
        self.stage = stage
        self.cluster = cluster
        self.job = job
        self.push_every = max(1, int(push_every))
        url = pushgateway_url if pushgateway_url is not None else os.environ.get("PUSHGATEWAY_URL", "")
        self.pushgateway_url: str | None = url.strip() or None
        self.registry = CollectorRegistry(auto_describe=True)
        self._labels = {"stage": stage, "cluster": "" if cluster is None else str(cluster)}
        self._calls = 0
        self._paused_until = 0.0
        self._failing = False

        def g(name: str, doc: str, labels: tuple[str, ...]) -> Gauge:
            return Gauge(name, doc, labels, registry=self.registry)

        train = ("stage", "cluster")
        self._epoch = g("lt_ssl_train_epoch", "Current training epoch (0-based).", train)
        self._step = g("lt_ssl_train_step", "Optimizer steps taken in this stage.", train)
        self._loss = g("lt_ssl_train_loss", "Training loss of the latest logged step.", train)
        self._ips = g("lt_ssl_train_images_per_second", "Training throughput in images per second.", train)
        self._lr = g("lt_ssl_train_learning_rate", "Learning rate of the latest step.", train)
        self._accuracy = g(
            "lt_ssl_eval_accuracy_ratio",
            "Top-1 accuracy (0..1) of a model on a class group (all/many/medium/few) under an evaluation protocol.",
            ("model", "group", "evaluation"),
        )
        self._duration = g("lt_ssl_stage_duration_seconds", "Wall-clock seconds the stage took.", train)

    # ------------------------------------------------------------------------------ setting

    @property
    def grouping_key(self) -> dict[str, str]:
        """The Pushgateway group of this process: run + stage (+ cluster for experts), never instance."""
        key = {"run": self.run_id, "stage": self.stage}
        if self.cluster is not None:
            key["cluster"] = str(self.cluster)
        return key

    def progress(self, epoch: int, step: int, loss: float, images_per_second: float, lr: float) -> None:
        """Training progress; pushes on the first call and then every `push_every` calls."""
        self._epoch.labels(**self._labels).set(epoch)
        self._step.labels(**self._labels).set(step)
        self._loss.labels(**self._labels).set(loss)
        self._ips.labels(**self._labels).set(images_per_second)
        self._lr.labels(**self._labels).set(lr)
        self._calls += 1
        if self._calls == 1 or self._calls % self.push_every == 0:
            if time.monotonic() >= self._paused_until:
                self.push()

    def accuracy(self, model: str, group: str, evaluation: str, value: float) -> None:
        """Accuracy as a ratio in 0..1 (not percent) of `model` on class `group` under `evaluation`."""
        if value == value and not 0.0 <= value <= 1.0:  # NaN (an empty group) passes through
            raise ValueError(f"accuracy {value} is not a ratio in 0..1 (percent? divide by 100)")
        self._accuracy.labels(model=model, group=group, evaluation=evaluation).set(value)

    def stage_duration(self, seconds: float) -> None:
        self._duration.labels(**self._labels).set(seconds)

    # ------------------------------------------------------------------------------ output

    def exposition(self) -> bytes:
        """The registry in Prometheus' text exposition format (write it as `metrics.prom`)."""
        return generate_latest(self.registry)

    def push(self) -> bool:
        """Send the registry to the Pushgateway; True on success. Never raises: metrics must not kill training."""
        if not self.pushgateway_url:
            return False
        try:
            # PUT (push_to_gateway), not POST (pushadd_to_gateway): this registry holds the whole
            # state of the group (one process per run/stage/cluster), so replacing the group makes
            # it exactly this process's view, and a retried stage's first push clears whatever a
            # failed earlier attempt left there. pushadd would be for several pushers sharing one group.
            push_to_gateway(
                self.pushgateway_url, job=self.job, registry=self.registry,
                grouping_key=self.grouping_key, timeout=_PUSH_TIMEOUT_S,
            )
        except Exception as e:  # noqa: BLE001 - URLError, HTTPError, OSError, timeouts...
            self._paused_until = time.monotonic() + _RETRY_AFTER_FAILURE_S
            level = logging.DEBUG if self._failing else logging.WARNING  # one warning per outage
            self._failing = True
            log.log(level, "metrics push to %s failed (training goes on): %s", self.pushgateway_url, _one_line(e))
            return False
        if self._failing:
            log.info("metrics push to %s works again", self.pushgateway_url)
        self._failing = False
        self._paused_until = 0.0
        return True


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())
