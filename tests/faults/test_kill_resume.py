"""SIGKILL at seeded random points of a quickstart run, then the same command again, many times.

The run is `lt_ssl.pipeline.local.run` (what `lt-ssl run` calls) with each stage command in its own
process, forked from a preloaded fork server (see conftest.py), and the SIGKILLs go to those stage
processes directly. Per stage, in a seeded order and at seeded points:
- `ckpt`: mid-checkpoint-write: half of ckpt/step-N.pt is in the local store's hidden temp file,
- `time`: after a random delay (anywhere: data loading, a step, k-means, the linear probe, ...),
- `output`: mid-write of one of the stage's outputs (model.pt, info.json, clusters.json, ...),
- `success`: mid-write of _SUCCESS.json, or right after it (the stage is done, the process is not).
After every kill the same `run(...)` is called again. Checked throughout: the run always completes;
a stage whose _SUCCESS.json exists is never started again and its _SUCCESS.json never changes; a
training stage resumes from exactly the newest complete checkpoint (the one being written when
killed is not it); and a reader polling the run folder the whole time only ever sees objects that
are byte-for-byte one complete write (every write's hash is journaled before it starts).

Determinism: the killed-and-resumed run ends with the same metrics.json (and bit-identical model
weights) as an uninterrupted run of the same config, both on CPU with one thread.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from lt_ssl.config import config_hash, load_config
from lt_ssl.pipeline import local
from lt_ssl.pipeline.contract import SUCCESS, is_done, stage_prefix
from lt_ssl.store import open_store
from lt_ssl.store.local import LocalStore
from tests.conftest import QUICKSTART, TINY

from .conftest import RESUME, Journal, read_all

SEED = 20240607
TRAINING = ("pretrain", "baseline", "expert", "distill")
# Several checkpoints per training stage, so there is always a previous one to resume from.
OVERRIDES = TINY + [
    "pretrain.epochs=3", "pretrain.checkpoint_every=1",
    "baseline.train.epochs=2", "baseline.train.checkpoint_every=1",
    "expert.train.epochs=2", "expert.train.checkpoint_every=1",
    "distill.train.epochs=2", "distill.train.checkpoint_every=1",
]
MIN_KILLS = 20


@dataclass
class Kill:
    prefix: str
    kind: str  # ckpt | time | output | success | success-after
    delay: float = 0.0
    name: str = ""  # output name for kind=output
    landed: bool = False
    note: str = ""


def _is_training(prefix: str) -> bool:
    return prefix.split("/")[0] in TRAINING


def _ckpt_pos(store, key: str) -> tuple[int, int]:
    state = torch.load(store.root / key, map_location="cpu", weights_only=True)
    return state["epoch"], state["step"]


class Harness:
    """Replaces local._execute: runs each stage command in a forked process and kills it on schedule."""

    def __init__(self, forked, run_dir: Path, journal: Journal, kills: list[Kill] | None = None):
        self.forked, self.journal = forked, journal
        self.store = open_store(run_dir.as_uri())
        self.chash = config_hash(load_config(QUICKSTART, OVERRIDES))
        self.pending: dict[str, list[Kill]] = {}
        for k in kills or []:
            self.pending.setdefault(k.prefix, []).append(k)
        self.done_kills: list[Kill] = []
        self.problems: list[str] = []
        self.durations: dict[str, float] = {}
        self.resumes: list[tuple[str, tuple[int, int] | None, tuple[int, int] | None]] = []
        self.started: list[str] = []
        self.success_seen: dict[str, bytes] = {}

    # local._execute(argv, threads, device, debug, progress) -> exit code
    def execute(self, argv, threads, device, debug, progress=True) -> int:
        stage = argv[2]
        cluster = int(argv[argv.index("--cluster") + 1]) if "--cluster" in argv else None
        prefix = stage_prefix(stage, cluster)
        if is_done(self.store, prefix, self.chash):
            self.problems.append(f"the runner started {prefix} again although it is done")
        self.started.append(prefix)
        # Experts run side by side (the runner starts every pending one even when one fails), so
        # kills are looked up by stage, not in one global order.
        kills = self.pending.get(prefix, [])
        kill = kills.pop(0) if kills else None

        expected = None
        if _is_training(prefix):
            ckpts = sorted(k for k in self.store.list(f"{prefix}/ckpt") if k.endswith(".pt"))
            expected = _ckpt_pos(self.store, ckpts[-1]) if ckpts else None
        pause_key, after = None, False
        success = rf"^{re.escape(prefix)}/{re.escape(SUCCESS)}$"
        # Every attempt that gets that far writes _SUCCESS.json last, so a kill whose own point never
        # comes (the stage had no checkpoint left to write, or finished before the timer) falls back
        # to killing it mid-write of _SUCCESS.json: no scheduled kill is ever lost.
        if kill and kill.kind == "ckpt":
            pause_key = rf"^{re.escape(prefix)}/ckpt/step-\d+\.pt$|{success}"
        elif kill and kill.kind == "time":
            pause_key = success
        elif kill and kill.kind == "output":
            pause_key = rf"^{re.escape(prefix)}/{re.escape(kill.name)}$"
        elif kill and kill.kind in ("success", "success-after"):
            pause_key, after = success, kill.kind == "success-after"

        cmd = list(argv[1:]) + (["--device", device] if device else [])
        journal_at = len(self.journal.path.read_text().splitlines())
        t0 = time.monotonic()
        child = self.forked.start(cmd, journal=str(self.journal.path), pause_key=pause_key, pause_after=after)
        if kill is not None:
            key = child.wait_marker(timeout=kill.delay if kill.kind == "time" else 90.0)
            if key is not None and child.proc.is_alive():
                self._check_paused(key, after)
                child.kill()
                kill.landed, kill.note = True, key
                if kill.kind in ("time", "ckpt") and key.endswith(SUCCESS):
                    kill.note = f"fell back to mid-write of {key}"
            elif kill.kind == "time" and child.proc.is_alive():
                child.kill()
                kill.landed = True
            self.done_kills.append(kill)
        rc = child.wait()
        self.durations[prefix] = time.monotonic() - t0
        log = child.text()
        for line in self.journal.path.read_text().splitlines()[journal_at:]:  # stages run one at a time here
            if not line.split(" ", 1)[1].startswith(f"{self.store.uri}/{prefix}/"):
                self.problems.append(f"{prefix} wrote outside {prefix}/: {line}")
        if rc not in (0, -9):
            self.problems.append(f"{prefix} exited {rc}:\n{log[-2000:]}")
        if _is_training(prefix):
            seen = [(int(m["epoch"]), int(m["step"])) for m in RESUME.finditer(log) if m["name"] == prefix.replace("/", "-")]
            got = seen[0] if seen else None
            if len(seen) > 1 or (seen and got != expected) or (rc == 0 and got != expected):
                self.problems.append(f"{prefix} resumed from {seen}, the newest complete checkpoint was {expected}")
            if got is not None or rc == 0:
                self.resumes.append((prefix, expected, got))
        return rc

    def _check_paused(self, key: str, after: bool) -> None:
        """While the writer is stopped: the half-written object is invisible; everything visible is whole."""
        path = self.store.root / key
        temps = list(path.parent.glob(f".{path.name}.*.tmp"))
        if not after and not temps:
            self.problems.append(f"paused mid-write of {key} but no hidden temp file holds the partial bytes")
        listed = self.store.list()
        if any(Path(k).name.startswith(".") for k in listed):
            self.problems.append(f"a hidden temp file is listed: {listed}")
        if not after and key in listed and path.stat().st_size == 0:
            self.problems.append(f"{key} is visible while it is being written")
        self.problems += self.journal.check(read_all(self.store))

    def check_run(self) -> None:
        """Between attempts: whole objects only; a done stage's _SUCCESS.json never changes."""
        self.problems += self.journal.check(read_all(self.store))
        for key in self.store.list():
            if key.endswith("/" + SUCCESS):
                data = self.store.read_bytes(key)
                first = self.success_seen.setdefault(key, data)
                if data != first:
                    self.problems.append(f"{key} was rewritten: a completed stage was redone")
                for out in json.loads(data)["outputs"]:
                    if not self.store.exists(out):
                        self.problems.append(f"{key} lists {out}, which does not exist")


class Reader(threading.Thread):
    """Reads every visible object of the run over and over while it is being written and killed."""

    def __init__(self, store, journal: Journal):
        super().__init__(daemon=True)
        self.store, self.journal = store, journal
        self.stop = threading.Event()
        self.reads = 0
        self.problems: list[str] = []
        self._seen: dict[str, tuple] = {}

    def run(self) -> None:
        while not self.stop.is_set():
            objs = {}
            for key in self.store.list():
                path = self.store.root / key
                try:
                    st = path.stat()
                    sig = (st.st_ino, st.st_size, st.st_mtime_ns)
                    if self._seen.get(key) == sig:
                        continue
                    objs[self.store.url(key)] = path.read_bytes()
                    self._seen[key] = sig
                except FileNotFoundError:
                    continue
            self.reads += len(objs)
            self.problems += self.journal.check(objs)
            self.stop.wait(0.05)


def _journal_test_process(monkeypatch, journal: Journal) -> None:
    """The runner writes config.yaml from this process: journal it like the stage processes' writes."""
    orig = LocalStore.write_bytes

    def write_bytes(self, key, data):
        journal.record(self.url(key), data)
        return orig(self, key, data)

    monkeypatch.setattr(LocalStore, "write_bytes", write_bytes)


def _run(harness: Harness, run_dir: Path, max_attempts: int) -> tuple[int, int]:
    attempts = 0
    while True:
        attempts += 1
        rc = local.run(QUICKSTART, list(OVERRIDES), run_dir.as_uri(), 1, "cpu", False)
        harness.check_run()
        if rc == 0:
            return rc, attempts
        if rc != -9 or attempts >= max_attempts:
            return rc, attempts


def _schedule(rng: random.Random, reference: Harness) -> list[Kill]:
    kills = []
    for prefix in reference.started:  # the runner's order
        outputs = [Path(k).name for k in reference.store.read_json(f"{prefix}/{SUCCESS}")["outputs"]]
        tail = [Kill(prefix, "output", name=rng.choice(outputs)), Kill(prefix, "success")]
        rng.shuffle(tail)
        if prefix in ("cluster", "evaluate"):  # done, but killed before the process exited
            tail.append(Kill(prefix, "success-after"))
        delay = rng.uniform(0.1, 0.5) * reference.durations[prefix]
        head = [Kill(prefix, "ckpt"), Kill(prefix, "time", delay=delay)] if _is_training(prefix) else [Kill(prefix, "time", delay=delay)]
        kills += head + tail
    return kills


@pytest.fixture(scope="module")
def runs(forked, tmp_path_factory):
    """An uninterrupted reference run, then the same run killed on schedule and rerun until it completes."""
    mp = pytest.MonkeyPatch()
    try:
        base = tmp_path_factory.mktemp("kill")
        ref_journal, kill_journal = Journal(base / "ref.journal"), Journal(base / "kill.journal")

        ref = Harness(forked, base / "reference", ref_journal)
        _journal_test_process(mp, ref_journal)
        mp.setattr(local, "_execute", ref.execute)
        t0 = time.monotonic()
        ref_rc, _ = _run(ref, base / "reference", 1)
        ref_seconds = time.monotonic() - t0
        assert ref_rc == 0 and not ref.problems, ref.problems

        rng = random.Random(SEED)
        harness = Harness(forked, base / "killed", kill_journal, _schedule(rng, ref))
        mp.undo()
        _journal_test_process(mp, kill_journal)
        mp.setattr(local, "_execute", harness.execute)
        reader = Reader(harness.store, kill_journal)
        reader.start()
        t0 = time.monotonic()
        try:
            rc, attempts = _run(harness, base / "killed", 200)
        finally:
            reader.stop.set()
            reader.join(10)
        killed_seconds = time.monotonic() - t0
        return {"ref": ref, "killed": harness, "rc": rc, "attempts": attempts, "reader": reader,
                "ref_seconds": ref_seconds, "killed_seconds": killed_seconds}
    finally:
        mp.undo()


def test_sigkill_anywhere_then_rerun_completes_without_redoing_or_partial_artifacts(runs):
    h, reader = runs["killed"], runs["reader"]
    landed = [k for k in h.done_kills if k.landed]
    by_kind: dict[str, int] = {}
    for k in landed:
        by_kind[k.kind] = by_kind.get(k.kind, 0) + 1
    print(f"\n{len(landed)} kills landed ({by_kind}), {len(h.done_kills) - len(landed)} missed, "
          f"{runs['attempts']} runs, reader read {reader.reads} objects; reference {runs['ref_seconds']:.1f} s, "
          f"killed run {runs['killed_seconds']:.1f} s")
    for k in h.done_kills + [k for ks in h.pending.values() for k in ks]:
        print(f"  {k.prefix:10} {k.kind:14} {'landed' if k.landed else 'MISSED'} {k.note or (f'{k.delay:.2f}s' if k.kind == 'time' else '')}")
    assert runs["rc"] == 0, h.problems
    assert not h.problems, "\n".join(h.problems)
    assert not reader.problems, "\n".join(reader.problems)
    assert reader.reads > 0
    assert len(landed) >= MIN_KILLS
    assert runs["attempts"] <= len(landed) + 1  # every run but the last had a kill; the next one went on
    prefixes = set(h.started)
    assert {k.prefix for k in landed} == prefixes  # every stage was killed
    fallbacks = sum(1 for k in landed if k.note.startswith("fell back"))
    assert by_kind.get("ckpt", 0) >= 6 and by_kind.get("success", 0) >= 9 and by_kind.get("output", 0) >= 9
    assert fallbacks <= 3, [(k.prefix, k.kind, k.note) for k in landed]  # the timer and the checkpoint points do land
    assert not any(h.pending.values()) and len(landed) == len(h.done_kills)  # every scheduled kill landed
    per_stage = {p: sum(1 for k in landed if k.prefix == p) for p in prefixes}
    assert min(per_stage.values()) >= 3, per_stage
    # every training stage resumed from a checkpoint at least once, at exactly the newest one
    resumed = {p for p, expected, got in h.resumes if got is not None}
    assert resumed == {p for p in prefixes if _is_training(p)}
    # every stage's outputs are whole; the killed writes left only hidden temp files behind
    store = h.store
    for prefix in prefixes:
        assert is_done(store, prefix, h.chash)
    for key in store.list():  # whole and standard: strict JSON (no NaN), loadable arrays and checkpoints
        if key.endswith(".json"):
            json.loads(store.read_bytes(key), parse_constant=lambda c: pytest.fail(f"{key} holds {c}: not JSON"))
        elif key.endswith(".npy"):
            store.read_numpy(key)
        elif key.endswith(".pt"):
            torch.load(store.root / key, map_location="cpu", weights_only=True)
    orphans = [p for p in store.root.rglob(".*.tmp")]
    assert len(orphans) <= sum(1 for k in landed if k.kind in ("ckpt", "output", "success", "time"))


def test_resumed_run_matches_an_uninterrupted_one(runs):
    """CPU, one thread, same seed: same final metrics, bit-identical weights and data products.

    Not identical, by design: _SUCCESS.json (timings, host, summary: seconds, images/s, and
    final_loss, which is NaN for a stage resumed from its last checkpoint since no step ran),
    metrics.prom (durations, throughput), and the checkpoints the killed run kept (different kill
    points leave different mid-run checkpoints; those at the same step are identical)."""
    ref, killed = runs["ref"].store, runs["killed"].store
    assert killed.read_json("evaluate/metrics.json") == ref.read_json("evaluate/metrics.json")
    identical, different = [], []
    for key in ref.list():
        if not killed.exists(key):
            continue
        same = killed.read_bytes(key) == ref.read_bytes(key)
        if not same and key.endswith(".pt"):
            a = torch.load(ref.root / key, map_location="cpu", weights_only=True)
            b = torch.load(killed.root / key, map_location="cpu", weights_only=True)
            same = _tensors_equal(a, b)
            key += " (tensors equal, bytes differ)" if same else ""
        (identical if same else different).append(key)
    print(f"\nidentical after resume: {identical}\ndifferent: {different}")
    allowed = re.compile(r"(^|/)(_SUCCESS\.json|metrics\.prom)$")
    assert [k for k in different if not allowed.search(k)] == []
    for key in ("pretrain/model.pt", "baseline/model.pt", "distill/model.pt", "cluster/assignments.npy",
                "prepare/subset.npy", "evaluate/metrics.json"):
        assert key in identical
    assert np.array_equal(killed.read_numpy("cluster/assignments.npy"), ref.read_numpy("cluster/assignments.npy"))


def _tensors_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_tensors_equal(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)  # NaN == NaN here


def test_a_done_stage_rerun_by_argo_still_writes_its_output_parameters(runs, tmp_path, capsys):
    """Argo retries a pod killed after _SUCCESS.json was written but before it exited: the stage is
    skipped, and the files Argo reads as output parameters must still be there."""
    from lt_ssl.cli import main
    from lt_ssl.pipeline.plan import PLANS

    HEADLINE = [name for name, _ in PLANS["recipe"].stage("evaluate").output.fields]

    uri = runs["killed"].store.uri
    clusters_out, outputs_dir = tmp_path / "clusters.json", tmp_path / "outputs"
    assert main(["stage", "cluster", "--run", uri, "--clusters-out", str(clusters_out)]) == 0
    assert main(["stage", "evaluate", "--run", uri, "--outputs-dir", str(outputs_dir)]) == 0
    assert capsys.readouterr().err.count("already done") == 2
    store = runs["killed"].store
    assert json.loads(clusters_out.read_text()) == store.read_json("cluster/clusters.json")
    metrics = store.read_json("evaluate/metrics.json")["models"]
    for key in HEADLINE:
        evaluation, _, model = key.split("_")
        assert float((outputs_dir / key).read_text()) == pytest.approx(metrics[model][evaluation]["top1"], abs=1e-6)
