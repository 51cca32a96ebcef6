"""The terminal progress line: drawn only when asked (a terminal), with position, note, rate and ETA."""

from __future__ import annotations

from lt_ssl.progress import Progress


def test_progress_draws_on_a_terminal(capsys):
    with Progress(100, "pretrain", start=20, enabled=True) as bar:
        bar.interval = 0.0
        bar.update(30, "epoch 2/4 loss 0.5000")
    err = capsys.readouterr().err
    last = err.rstrip("\n").split("\r")[-1]
    assert last.startswith("pretrain [############") and " 50% epoch 2/4 loss 0.5000 " in last
    assert "img/s ETA " in last and err.endswith("\n")


def test_progress_is_silent_off_a_terminal(capsys):
    with Progress(10, "features", enabled=False) as bar:
        bar.update(10)
    assert capsys.readouterr().err == ""
    # Under pytest stderr is not a terminal: the default follows it.
    assert Progress(10, "x").enabled is False
