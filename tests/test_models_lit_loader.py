"""shuffled_batches: the shuffle=True DataLoader's exact batches, gathered one batch at a time."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from models.lit import shuffled_batches


def test_same_batches_as_the_shuffling_dataloader():
    dataset = TensorDataset(torch.arange(10), torch.arange(10) * 100)
    expected = list(DataLoader(dataset, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(7)))
    got = list(shuffled_batches(dataset, 4, torch.Generator().manual_seed(7)))
    assert [len(users) for users, _ in got] == [4, 4, 2]
    assert len(got) == len(expected) == 3
    for (users, apps), (want_users, want_apps) in zip(got, expected, strict=True):
        assert torch.equal(users, want_users) and torch.equal(apps, want_apps)
        assert torch.equal(apps, users * 100)  # pairs stay aligned
    assert sorted(torch.cat([users for users, _ in got]).tolist()) == list(range(10))


def test_global_random_stream_untouched():
    # Negatives are drawn from torch's global generator: the loader must not consume it.
    torch.manual_seed(3)
    before = torch.rand(1)
    torch.manual_seed(3)
    list(shuffled_batches(TensorDataset(torch.arange(5)), 2, torch.Generator().manual_seed(1)))
    assert torch.equal(torch.rand(1), before)
