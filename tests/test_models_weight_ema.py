"""WarmupEMA (Lightning's WeightAveraging): validation, checkpoints and the final weights use the moving
average, training the raw weights."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, WeightAveraging
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from models.lit import WarmupEMA, ema_interval


class _Regression(pl.LightningModule):
    """y = w * x by SGD; records the raw weight after each step and the weight each validation saw."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([0.0]))
        self.raw_after_step: list[float] = []
        self.validated_with: list[float] = []

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return ((self.weight * x - y) ** 2).mean()

    def on_train_batch_end(self, *args: object) -> None:
        self.raw_after_step.append(float(self.weight.detach()))

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.validated_with.append(float(self.weight.detach()))
        # Higher is better: the best epoch is the one whose validated weight is closest to 1.5.
        self.log("val/score", -abs(float(self.weight.detach()) - 1.5), on_epoch=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(callbacks: list[pl.Callback], epochs: int = 3) -> _Regression:
    x = torch.linspace(0.5, 2.0, 8)[:, None]
    data = DataLoader(TensorDataset(x, 2.0 * x), batch_size=4)  # 2 steps per epoch
    module = _Regression()
    checkpointing = any(isinstance(callback, ModelCheckpoint) for callback in callbacks)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=checkpointing,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=callbacks)
    trainer.fit(module, train_dataloaders=data, val_dataloaders=DataLoader(TensorDataset(x, x), batch_size=8))
    return module


def _ema(raw: list[float], decay: float, every: int = 1) -> list[float]:
    """The average after each step: updates every ``every`` steps with the warm-up decay."""
    average, out, updates = 0.0, [], 0  # starts at the initial weight, 0
    for step, value in enumerate(raw, start=1):
        if step % every == 0:
            d = min(decay**every, (1 + updates) / (10 + updates))
            average = d * average + (1 - d) * value
            updates += 1
        out.append(average)
    return out


def test_validation_and_the_end_use_the_average_and_training_the_raw_weights():
    assert issubclass(WarmupEMA, WeightAveraging)
    module = _fit([WarmupEMA(0.9)])
    expected = _ema(module.raw_after_step, 0.9)
    # Warm-up: the first updates use (1 + u) / (10 + u) = 0.1, 0.18, ... below 0.9.
    assert expected[0] == pytest.approx(0.9 * module.raw_after_step[0])
    assert len(module.raw_after_step) == 6
    # Validation after each epoch (2 steps) saw the average at that step, not the raw weight.
    assert module.validated_with == pytest.approx([expected[1], expected[3], expected[5]], abs=1e-6)
    assert module.validated_with[0] != pytest.approx(module.raw_after_step[1], abs=1e-3)
    # Training went on from the raw weights: the raw sequence is plain SGD, monotone towards 2.
    assert all(b > a for a, b in zip(module.raw_after_step, module.raw_after_step[1:], strict=False))
    assert float(module.weight.detach()) == pytest.approx(expected[-1], abs=1e-6)


def test_the_best_checkpoint_holds_the_average_it_validated(tmp_path):
    best = ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="val/score", mode="max", save_top_k=1)
    module = _fit([best, WarmupEMA(0.5)], epochs=4)
    scores = [-abs(v - 1.5) for v in module.validated_with]
    checkpoint = torch.load(best.best_model_path, weights_only=False)
    # Not the last epoch: the average went past 1.5, so the checkpoint is not just the final weights.
    assert checkpoint["epoch"] == scores.index(max(scores)) < 3
    assert float(checkpoint["state_dict"]["weight"]) == pytest.approx(module.validated_with[checkpoint["epoch"]])
    # The raw weights of that epoch are kept beside the average (Lightning's resumable format).
    assert float(checkpoint["current_model_state"]["weight"]) != pytest.approx(float(checkpoint["state_dict"]["weight"]))


def test_decay_out_of_range_is_refused():
    with pytest.raises(ValueError, match="decay"):
        WarmupEMA(1.0)
    with pytest.raises(ValueError, match="interval"):
        WarmupEMA(0.9, every=0)


def test_sparser_updates_keep_the_time_horizon():
    module = _fit([WarmupEMA(0.5, every=2)])
    expected = _ema(module.raw_after_step, 0.5, every=2)
    # Updates after steps 2, 4, 6 with decay min(0.5 ** 2, warm-up) = 0.1, 0.18, 0.25.
    assert expected[1] == pytest.approx(0.9 * module.raw_after_step[1])
    assert module.validated_with == pytest.approx([expected[1], expected[3], expected[5]], abs=1e-6)
    assert float(module.weight.detach()) == pytest.approx(expected[-1], abs=1e-6)


def test_update_interval_scales_with_the_weights():
    assert ema_interval(nn.Linear(10, 10), 0) == 1
    assert ema_interval(nn.Linear(10, 10), 3) == 3
    assert ema_interval(nn.Embedding(100_000, 50), 0) == 3  # 5M weights, one step per 2M


def test_without_warmup_the_average_starts_at_the_initial_weights():
    module = _fit([WarmupEMA(0.9, warmup=False)])
    average, expected = 0.0, []
    for value in module.raw_after_step:
        average = 0.9 * average + 0.1 * value
        expected.append(average)
    assert module.validated_with == pytest.approx([expected[1], expected[3], expected[5]], abs=1e-6)
    assert float(module.weight.detach()) == pytest.approx(expected[-1], abs=1e-6)
