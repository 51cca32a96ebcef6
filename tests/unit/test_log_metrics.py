"""Results read back from an `experiment run` log: the printers' lines parse back, and a report comes out of a log."""

from __future__ import annotations

import pytest

from lt_ssl.cli import main
from lt_ssl.experiment import aggregate, load_experiment, log_metrics, tagged
from lt_ssl.pipeline.report import parse_results_row, parse_score_line, results_table, score_line


def _rep(top1: float, many: float, medium: float, few: float) -> dict:
    return {"top1": top1, "many": many, "medium": medium, "few": few}


RESULTS = {"base": {"knn": _rep(0.81234, 0.7, 0.85, 0.9), "linear": _rep(0.8777, 0.8, 0.93, 0.93), "linear_p1": None},
           "pixels": {"knn": _rep(0.8143, 0.7228, 0.8617, 0.889), "linear": _rep(0.8345, 0.738, 0.8997, 0.898)}}


def test_results_table_rows_and_score_lines_read_back():
    parsed = [parse_results_row(line) for line in results_table(RESULTS).splitlines()]
    assert parsed[:2] == [None, None]  # the header and the separator
    got = {(m, e): rep for m, e, rep in parsed[2:]}
    assert set(got) == {("base", "knn"), ("base", "linear"), ("base", "linear_p1"), ("pixels", "knn"),
                        ("pixels", "linear")}
    assert got[("base", "linear_p1")] is None  # n/a
    for (m, e), rep in got.items():
        if rep is not None:  # the table prints percent with 2 decimals
            assert rep == pytest.approx(RESULTS[m][e], abs=5e-5)
    line = score_line("base", RESULTS["base"], 27.94)
    assert line == "[evaluate] base: knn 0.8123 linear 0.8777 (27.9s)"
    assert parse_score_line(line) == ("base", {"knn": 0.8123, "linear": 0.8777})
    assert parse_score_line("[evaluate] base: knn") is None and parse_results_row("| a | b |") is None


def _log(tmp_path):
    exp_path = tmp_path / "e.yaml"
    exp_path.write_text("name: t\nconfig: configs/quickstart.yaml\nvariants:\n  A: {}\n  B: {}\n  C: {}\n"
                        "axes:\n  split: [0]\ndifferences:\n  - {by: variant, reference: A}\n")
    exp = load_experiment(exp_path)
    random = {"knn": _rep(0.6, 0.5, 0.6, 0.7), "linear": _rep(0.65, 0.5, 0.6, 0.7)}
    lines = ["$ lt-ssl experiment run ...",  # untagged: ignored
             tagged("a--split-0", "[pretrain] epoch 75/75 loss 4.55 3576 img/s"),
             tagged("a--split-0", score_line("base", {"knn": _rep(0.5, 0, 0, 0), "linear": None}, 1.0)),
             *[tagged("a--split-0", line) for line in results_table(RESULTS | {"random": random}).splitlines()],
             tagged("b--split-0", score_line("random", random, 9.0)),
             tagged("b--split-0", score_line("base", {"knn": _rep(0.83, 0, 0, 0), "linear": _rep(0.88, 0, 0, 0)}, 9.0)),
             tagged("b--split-0", "lt-ssl: SIGTERM: stopped, each training stage at a checkpoint"),  # cut off
             tagged("c--split-0", "[pretrain] epoch 46/75 loss 3.07 1602 img/s")]
    log = tmp_path / "run.log"
    log.write_text("\n".join(lines) + "\n")
    return exp, exp_path, log


def test_log_metrics_take_the_table_over_score_lines_and_top1_alone_from_a_cut_off_cell(tmp_path):
    exp, _, log = _log(tmp_path)
    metrics = log_metrics(exp, log.read_text())
    assert metrics["c--split-0"] is None  # nothing scored: not finished
    a = metrics["a--split-0"]["models"]
    assert a["base"]["knn"] == pytest.approx(RESULTS["base"]["knn"], abs=5e-5)  # the table, not the 0.5 score line
    b = metrics["b--split-0"]["models"]
    assert set(b) == {"random", "base"}  # pixels never scored there
    assert b["base"]["knn"] == {"top1": 0.83, "many": None, "medium": None, "few": None}
    rows = {r["row"]: r for r in aggregate(exp, metrics)}
    assert rows["B"]["finished"] == 1 and rows["B"]["knn_top1"][0] == pytest.approx(0.83)
    assert rows["B"]["knn_many"] is None
    assert rows["C"]["status"] == "not yet run"
    assert rows["raw pixels (floor)"]["knn_top1"][0] == pytest.approx(0.8143)  # from A, the cell that scored it


def test_report_from_a_log_says_so_and_rejects_a_prefix_beside_it(tmp_path, capsys):
    exp, exp_path, log = _log(tmp_path)
    out = tmp_path / "out"
    assert main(["experiment", "report", str(exp_path), "--from-log", str(log), "--out", str(out)]) == 0
    md = (out / "t.md").read_text()
    assert f"Read from the runner's log `{log}`" in md
    assert "| B | 1/1 | – | 83.0 | – | – | – | 88.0 |" in md
    assert "| B | A | 1 | +1.8 | – | +0.2 | – |" in md  # 83.0 - 81.23 kNN, 88.0 - 87.77 linear
    assert (out / "t.csv").exists() and (out / "t_differences.csv").exists()
    with pytest.raises(SystemExit) as e:
        main(["experiment", "report", str(exp_path), "--from-log", str(log), "--prefix", f"file://{tmp_path}"])
    assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
