"""Optimizer/scheduler state round-trips through safetensors + JSON, never pickle."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.state_io import load_state, save_state


def test_adamw_and_scheduler_state_roundtrip_and_resume_identically(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    x = torch.randn(16, 4)

    def step() -> None:
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()
        sched.step()

    for _ in range(3):
        step()
    save_state(opt.state_dict(), tmp_path, "optimizer")
    save_state(sched.state_dict(), tmp_path, "scheduler")
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    step()
    expected = {k: v.clone() for k, v in net.state_dict().items()}

    net.load_state_dict(weights)
    opt2 = torch.optim.AdamW(net.parameters(), lr=1e-2)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0 / (1 + s))
    opt2.load_state_dict(load_state(tmp_path, "optimizer"))
    sched2.load_state_dict(load_state(tmp_path, "scheduler"))
    assert opt2.param_groups[0]["betas"] == (0.8, 0.95)
    opt, sched = opt2, sched2
    step()
    for k, v in net.state_dict().items():
        assert torch.equal(v, expected[k]), k
    assert {p.suffix for p in tmp_path.iterdir()} == {".json", ".safetensors"}


def test_unstorable_values_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="without pickle"):
        save_state({"fn": print}, tmp_path, "bad")
    assert not list(tmp_path.iterdir())
