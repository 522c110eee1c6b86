"""LazyAdamW: AdamW on dense gradients, lazy Adam on the rows of sparse embedding gradients."""

from __future__ import annotations

import torch
from torch import nn

from models.lit import LazyAdamW


def _steps(model: nn.Module, optimizer: torch.optim.Optimizer, batches: list[torch.Tensor]) -> None:
    for rows in batches:
        optimizer.zero_grad()
        loss = (model(rows) ** 2).sum() + model(rows).sum()
        loss.backward()
        optimizer.step()


def test_dense_parameters_follow_adamw_exactly():
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    lazy = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    lazy.load_state_dict(reference.state_dict())
    inputs = [torch.randn(5, 3) for _ in range(6)]
    _steps(reference, torch.optim.AdamW(reference.parameters(), lr=0.05, weight_decay=0.1), inputs)
    _steps(lazy, LazyAdamW(lazy.parameters(), lr=0.05, weight_decay=0.1), inputs)
    for want, got in zip(reference.parameters(), lazy.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_sparse_rows_match_adam_on_the_touched_rows_and_leave_the_others():
    torch.manual_seed(0)
    table = nn.Embedding(6, 3, sparse=True)
    start = table.weight.detach().clone()
    optimizer = LazyAdamW(table.parameters(), lr=0.1, weight_decay=0.0)
    # Rows 0 and 2 (row 2 twice in a batch: its gradient rows are summed), never rows 3-5.
    batches = [torch.tensor([0, 2, 2]), torch.tensor([2]), torch.tensor([0, 1])]
    _steps(table, optimizer, batches)
    torch.testing.assert_close(table.weight[3:], start[3:], rtol=0, atol=0)

    # Expected: Adam by hand, each row with its own moments and the optimizer's global step.
    expected = start.clone()
    avg, avg_sq = torch.zeros_like(start), torch.zeros_like(start)
    for step, rows in enumerate(batches, start=1):
        grad = torch.zeros_like(start)
        grad.index_add_(0, rows, 2 * expected[rows] + 1)
        touched = torch.unique(rows)
        avg[touched] = 0.9 * avg[touched] + 0.1 * grad[touched]
        avg_sq[touched] = 0.999 * avg_sq[touched] + 0.001 * grad[touched] ** 2
        denom = (avg_sq[touched] / (1 - 0.999**step)).sqrt() + 1e-8
        expected[touched] -= 0.1 / (1 - 0.9**step) * avg[touched] / denom
    torch.testing.assert_close(table.weight.detach(), expected, rtol=0, atol=1e-6)


def test_sparse_weight_decay_applies_to_touched_rows_only():
    table = nn.Embedding(3, 2, sparse=True)
    with torch.no_grad():
        table.weight.fill_(1.0)
    optimizer = LazyAdamW(table.parameters(), lr=0.1, weight_decay=0.5)
    optimizer.zero_grad()
    (table(torch.tensor([1])) * 0.0).sum().backward()  # zero gradient: only the decay moves row 1
    optimizer.step()
    assert table.weight[0].tolist() == [1.0, 1.0] and table.weight[2].tolist() == [1.0, 1.0]
    torch.testing.assert_close(table.weight[1], torch.full((2,), 0.95), rtol=0, atol=1e-6)


def test_schedulers_and_state_dict_round_trip():
    table = nn.Embedding(4, 2, sparse=True)
    optimizer = LazyAdamW(table.parameters(), lr=0.2)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.5)
    _steps(table, optimizer, [torch.tensor([1])])
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 0.1
    restored = LazyAdamW(table.parameters(), lr=0.2)
    restored.load_state_dict(optimizer.state_dict())
    assert restored.param_groups[0]["lr"] == 0.1
    state = restored.state[table.weight]
    assert state["step"] == 1
    assert torch.count_nonzero(state["exp_avg"].abs().sum(dim=1)).item() == 1  # only row 1 has moments
