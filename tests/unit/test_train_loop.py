"""The training loop reads the device once per window of steps (CUDA's default); nothing else may change."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lt_ssl.config import TrainConfig
from lt_ssl.errors import CollapseError
from lt_ssl.store import open_store
from lt_ssl.train import Checkpointer, train


# The window exists for CUDA (one host sync per window); where a device is present the same checks run there too.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def _train(tmp_path, sync_every: int, nan_at: int | None = None, epochs: int = 3, device: str = "cpu"):
    torch.manual_seed(0)
    model = nn.Linear(12, 3).to(device)
    images = torch.randint(0, 256, (30, 3, 2, 2), dtype=torch.uint8).to(device)  # 7 steps of 4: windows of 3 straddle
    zs = []

    def step_fn(x, idx, gen, epoch, global_step, total):
        out = model(x.float().flatten(1) / 255 + torch.rand(x.shape[0], 12, generator=gen, device=x.device))
        loss = out.pow(2).mean()
        if global_step == nan_at:
            loss = loss * float("nan")
        zs.append(out.std().detach())
        return {"loss": loss, "z_std": zs[-1]}

    cfg = TrainConfig(epochs=epochs, batch_size=4, lr=0.5, checkpoint_every=1)
    store = open_store((tmp_path / f"run-{device}-{sync_every}").as_uri())
    result = train(model, [{"params": model.parameters()}], images, step_fn, cfg, Checkpointer(store, "s", "lin"),
                   seed=0, name="s", sync_every=sync_every, collapse_std=1e-9)
    return model, result, store


@pytest.mark.parametrize("device", DEVICES)
def test_a_window_of_steps_trains_exactly_as_one_step_at_a_time(tmp_path, device):
    one, r1, s1 = _train(tmp_path, sync_every=1, device=device)
    win, r3, s3 = _train(tmp_path, sync_every=3, device=device)
    for a, b in zip(one.parameters(), win.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (r1.steps, r1.final_loss) == (r3.steps, r3.final_loss) == (21, r1.final_loss)
    assert s1.list("s/ckpt") and [k.rsplit("/", 1)[1] for k in s1.list("s/ckpt")] == \
        [k.rsplit("/", 1)[1] for k in s3.list("s/ckpt")]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sync_every", [1, 3, 50])
def test_a_nan_loss_is_reported_at_its_own_step_and_no_checkpoint_holds_it(tmp_path, sync_every, device):
    with pytest.raises(CollapseError, match=r"s: loss became nan at epoch 1 step 2; lower the learning rate"):
        _train(tmp_path, sync_every=sync_every, nan_at=9, device=device)  # epoch 1 (0-based), its step 2
    store = open_store((tmp_path / f"run-{device}-{sync_every}").as_uri())
    assert [k.rsplit("/", 1)[1] for k in store.list("s/ckpt")] == ["step-000000007.pt"]  # epoch 0's only
