"""Training precision: bf16 autocast on CUDA; on a CPU only when asked (LT_SSL_CPU_BF16=1) and native."""

from __future__ import annotations

import pytest
import torch

from lt_ssl.train import CPU_BF16_ENV, bf16_native, step_autocast


def test_cpu_runs_float32_unless_asked(monkeypatch):
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    cpu = torch.device("cpu")
    assert bf16_native(cpu) is False
    with step_autocast(cpu):
        assert torch.nn.Linear(4, 4)(torch.ones(2, 4)).dtype == torch.float32


def test_cpu_bf16_when_asked_follows_the_hardware(monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    cpu = torch.device("cpu")
    assert bf16_native(cpu) is native
    with step_autocast(cpu):
        out = torch.nn.Linear(4, 4)(torch.ones(2, 4))
    assert out.dtype == (torch.bfloat16 if native else torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_always_bf16(monkeypatch):
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    assert bf16_native(torch.device("cuda"))
