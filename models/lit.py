"""Lightning plumbing shared by the gradient-trained models (cf_bpr, two_tower).

- :class:`NDCGAtK`: a torchmetrics metric object for ``val/ndcg@k`` during training;
- :class:`EvaluationRows`: the validation users (unseen validation positives) as a Dataset;
- :class:`EpochHistory` and :class:`BestWeights`: per-epoch metrics for MLflow and the
  best-epoch weights (the epoch is chosen on validation NDCG only);
- :func:`make_trainer`: one deterministic Trainer configuration for every model;
- :func:`fit_module`: the shared fit (best validation epoch kept, checkpoint saved);
- :func:`inverse_sqrt_schedule`: the incremental-training rate base / sqrt(1 + iteration);
- :class:`LazyAdamW`: AdamW for dense parameters, lazy Adam for sparse embedding gradients.
"""

from __future__ import annotations

import contextlib
import copy
import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import scipy.sparse as sp
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, TensorDataset
from torchmetrics import Metric

from models.common import ModelOptions
from models.data import InteractionData
from models.evaluation import evaluation_users, sample_evaluation_users
from personalization.config import Config


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (and dataloader workers) for a reproducible run."""
    pl.seed_everything(seed, workers=True, verbose=False)


class NDCGAtK(Metric):
    """Mean binary NDCG@k over users, from full score rows (seen items already ``-inf``)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, k: int = 10):
        super().__init__()
        self.k = k
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, relevant: torch.Tensor) -> None:
        """``scores`` float ``[b, n]``; ``relevant`` bool ``[b, n]`` (rows without relevant items are skipped)."""
        k = min(self.k, scores.shape[1])
        n_relevant = relevant.sum(dim=1)
        keep = n_relevant > 0
        if not bool(keep.any()):
            return
        scores, relevant, n_relevant = scores[keep], relevant[keep], n_relevant[keep]
        top = torch.topk(scores, k, dim=1).indices
        gains = relevant.gather(1, top).to(torch.float64)
        discounts = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64, device=scores.device))
        dcg = (gains * discounts).sum(dim=1)
        ideal = torch.cumsum(discounts, 0)[(n_relevant.clamp(max=k) - 1)]
        self.total += (dcg / ideal).sum()
        self.count += int(keep.sum())

    def compute(self) -> torch.Tensor:
        return self.total / self.count.clamp(min=1)


def dense_rows(matrix: sp.csr_matrix, rows: np.ndarray) -> torch.Tensor:
    """Bool tensor ``[len(rows), n_cols]``: True where ``matrix[row, col]`` is non-zero."""
    block = matrix[rows]
    dense = np.zeros(block.shape, dtype=bool)
    r, c = block.nonzero()
    dense[r, c] = True
    return torch.from_numpy(dense)


class EvaluationRows(Dataset):
    """Validation users as a Dataset of row indices, with seen and relevant matrices.

    Relevant = validation positives not in the user's training history, exactly as
    :func:`models.evaluation.evaluate` counts them.
    """

    def __init__(self, data: InteractionData, max_users: int = 0, seed: int = 0):
        """``max_users`` > 0 keeps a seeded uniform sample of that many validation users
        (the per-epoch NDCG picks the best epoch; it need not score every user)."""
        rows, truth = evaluation_users(sample_evaluation_users(data, max_users, seed))
        self.rows = rows
        self.seen = data.train.tocsr()
        n_apps = data.n_apps
        if len(rows):
            lengths = [len(items) for items in truth]
            self.relevant = sp.csr_matrix(
                (np.ones(sum(lengths), dtype=np.float32), np.concatenate(truth), np.r_[0, np.cumsum(lengths)]),
                shape=(len(rows), n_apps),
            )
        else:
            self.relevant = sp.csr_matrix((0, n_apps), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: int) -> int:
        return position

    def collate(self, positions: list[int]) -> dict[str, torch.Tensor]:
        """Batch: ``users`` (row indices), ``seen`` and ``relevant`` bool ``[b, n_apps]``."""
        positions_array = np.asarray(positions, dtype=np.int64)
        rows = self.rows[positions_array]
        return {
            "users": torch.from_numpy(rows),
            "seen": dense_rows(self.seen, rows),
            "relevant": dense_rows(self.relevant, positions_array),
        }


def shuffled_batches(dataset: TensorDataset, batch_size: int, generator: torch.Generator) -> DataLoader:
    """Shuffled mini-batches of ``dataset`` that index each batch with one tensor gather.

    Same permutation and batches as ``DataLoader(dataset, batch_size, shuffle=True,
    generator=generator)``, whose default path calls ``__getitem__`` per example and then
    stacks the scalars: ~1 s per 100k BPR pairs on CPU, more than the training step itself.
    """
    sampler = BatchSampler(RandomSampler(dataset, generator=generator), batch_size, drop_last=False)
    # batch_size=None: the sampler yields index lists and TensorDataset gathers a batch at once.
    # The loader draws its worker base seed from ``generator`` before the sampler shuffles, as
    # the shuffle=True loader does, so both see the same random stream.
    return DataLoader(dataset, sampler=sampler, batch_size=None, generator=generator)


class EpochMeansMixin:
    """Training losses accumulated in ``MeanMetric`` attributes and logged once per epoch.

    ``self.log`` on every step costs Lightning's result bookkeeping each time (together with
    :class:`CpuBatchesMixin`, about 1 ms a step on CPU, measured against a plain loop); here the
    step only updates the metric and ``on_train_epoch_end`` logs its mean. ``epoch_means`` maps
    each log key (``"train/loss"``) to its ``MeanMetric`` attribute. List the mixin before
    ``pl.LightningModule``.
    """

    epoch_means: dict[str, str] = {}

    def on_train_epoch_end(self) -> None:
        for key, attribute in self.epoch_means.items():
            metric = getattr(self, attribute)
            if metric.update_count:
                self.log(key, metric.compute())  # type: ignore[attr-defined]
                metric.reset()


class CpuBatchesMixin:
    """A data module whose batches, already on the CPU, are used as they are on a CPU run.

    Lightning otherwise walks every batch with ``apply_to_collection`` to move it to the device
    it is on. On an accelerator the default transfer applies. List it before ``pl.LightningDataModule``.
    """

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if device.type == "cpu":
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)  # type: ignore[misc]


class EpochHistory(pl.Callback):
    """Collects the epoch-level logged metrics (``train/loss``, ``val/ndcg@k``) of each epoch.

    An epoch's row is taken when the next epoch starts (or training ends): Lightning runs this
    callback's ``on_train_epoch_end`` before the module's, where :class:`EpochMeansMixin` logs
    the epoch's training losses.
    """

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self._ended: int | None = None  # the epoch that ended and has no row yet

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._ended = trainer.current_epoch

    def _record(self, trainer: pl.Trainer) -> None:
        if self._ended is None:
            return
        row = {"epoch": float(self._ended)}
        for name, value in trainer.callback_metrics.items():
            if torch.is_tensor(value) and value.numel() == 1:
                row[name] = float(value)
        self.epochs.append(row)
        self._ended = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer)


class BestWeights(pl.Callback):
    """Keeps a copy of the weights of the best validation epoch and restores them at the end."""

    def __init__(self, monitor: str):
        self.monitor = monitor
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        score = float(value)
        if self.best_score is None or score > self.best_score:
            self.best_score = score
            self.best_epoch = trainer.current_epoch
            self.best_state = copy.deepcopy(pl_module.state_dict())

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.best_state is not None:
            pl_module.load_state_dict(self.best_state)


#: Weights per step of the automatic weight-average update interval (see :func:`ema_interval`).
EMA_WEIGHTS_PER_STEP = 2_000_000


def ema_interval(module: torch.nn.Module, configured: int) -> int:
    """Steps between weight-average updates: ``configured`` if > 0, else one step per 2M weights
    (rounded up), so an update stays a small share of a step (ml-100k: 1; medium: 4)."""
    if configured > 0:
        return configured
    return max(1, math.ceil(sum(p.numel() for p in module.parameters()) / EMA_WEIGHTS_PER_STEP))


class WeightEMA(pl.Callback):
    """Exponential moving average of the trained weights, used for validation and kept at the end.

    After every optimizer step ``ema = decay * ema + (1 - decay) * weights`` (floating-point
    parameters). Validation runs on the averaged weights (swapped in at the start of the
    validation epoch, out at its end), so list this callback *after* :class:`BestWeights`:
    that one then snapshots the averaged weights it validated. When training ends the
    module keeps the average. The average smooths the epoch-to-epoch noise of the last
    steps, so the epoch chosen on validation matters less.

    With ``warmup`` the ``u``-th update (from 0) uses ``min(decay ** every, (1 + u) / (10 + u))``:
    early updates follow the weights closely, so the first epochs' validation (and a short
    fine-tuning run on a small day) is not dominated by the starting weights (TensorFlow's
    ``ExponentialMovingAverage(num_updates=...)`` does the same). Without it the average keeps
    ``decay ** steps`` of the starting weights (a shrinkage towards them: 5-10% after ml-100k's
    ~2,500 steps at 0.999, but nearly all of a tiny run's). ``every`` > 1 updates after
    every ``every``-th step with ``decay ** every`` (the same time horizon): one update reads
    and writes every weight, ~25 ms for the 7.7M weights of the two-tower at medium against a
    47 ms step.
    """

    def __init__(self, decay: float, every: int = 1, warmup: bool = True):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        if every < 1:
            raise ValueError(f"EMA update interval must be >= 1 step, got {every}")
        self.decay = decay
        self.every = every
        self.warmup = warmup
        self.average: list[torch.Tensor] | None = None
        self._steps = 0

    @staticmethod
    def _parameters(pl_module: pl.LightningModule) -> list[torch.Tensor]:
        return [p for p in pl_module.parameters() if p.is_floating_point()]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.average = [p.detach().clone() for p in self._parameters(pl_module)]

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._steps += 1
        if self.average is not None and self._steps % self.every == 0:
            update = self._steps // self.every - 1
            decay = self.decay**self.every
            if self.warmup:
                decay = min(decay, (1.0 + update) / (10.0 + update))
            with torch.no_grad():
                # lerp_(w, 1 - d): ema + (1 - d) * (w - ema)
                torch._foreach_lerp_(self.average, [p.detach() for p in self._parameters(pl_module)], 1.0 - decay)

    def _swap(self, pl_module: pl.LightningModule) -> None:
        if self.average is None:
            return
        with torch.no_grad():
            for parameter, average in zip(self._parameters(pl_module), self.average, strict=True):
                current = parameter.detach().clone()
                parameter.copy_(average)
                average.copy_(current)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._swap(pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._swap(pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.average is not None:
            with torch.no_grad():
                for parameter, average in zip(self._parameters(pl_module), self.average, strict=True):
                    parameter.copy_(average)


def make_trainer(
    config: Config,
    options: ModelOptions,
    max_epochs: int,
    callbacks: list[pl.Callback],
    root_dir: str,
    monitor: str | None = None,
) -> pl.Trainer:
    """A deterministic, quiet Trainer; early stopping on ``monitor`` when patience > 0.

    Build and fit it inside :func:`deterministic_torch`.
    """
    callbacks = list(callbacks)
    if monitor and options.early_stopping_patience > 0 and not options.fast_dev_run:
        callbacks.append(
            pl.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=options.early_stopping_patience)
        )
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator=config.training.accelerator,
        devices=1,
        deterministic=True,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        fast_dev_run=options.fast_dev_run,
        limit_train_batches=options.limit_train_batches,
        default_root_dir=root_dir,
        callbacks=callbacks,
    )


@dataclass
class FitRun:
    """What :func:`fit_module` produced."""

    history: EpochHistory
    best: BestWeights
    checkpoint_path: str
    max_epochs: int


def fit_module(
    config: Config,
    options: ModelOptions,
    module: pl.LightningModule,
    datamodule: Any,
    name: str,
    incremental: bool,
    workdir: str | None = None,
    threads: int | None = None,
    ema_decay: float = 0.0,
    ema_every: int = 0,
    ema_warmup: bool = True,
) -> FitRun:
    """Fit ``module`` deterministically, keep the best validation epoch, save ``<workdir>/<name>.ckpt``.

    ``datamodule`` must be set up and expose ``validation`` (the validation users).
    ``threads`` overrides ``options.train_threads`` (torch intra-op threads; 0 = torch's default).
    ``ema_decay`` > 0 validates and keeps an exponential moving average of the weights, updated every
    ``ema_every`` steps (0: :func:`ema_interval` of the module's size), with or without warm-up
    (:class:`WeightEMA`).
    """
    training = config.training
    # Without validation users (e.g. fit_predict on a bare training file) the last epoch is kept.
    monitor = f"val/ndcg@{training.k}" if len(datamodule.validation) else None
    history, best = EpochHistory(), BestWeights(monitor or "")
    workdir = workdir or tempfile.mkdtemp(prefix=f"{name}-")
    max_epochs = options.incremental_epochs if incremental else training.max_epochs
    with deterministic_torch(options.train_threads if threads is None else threads):
        # WeightEMA after BestWeights: the best epoch's snapshot is taken of the averaged weights.
        callbacks: list[pl.Callback] = [history, best]
        if ema_decay > 0:
            callbacks.append(WeightEMA(ema_decay, ema_interval(module, ema_every), ema_warmup))
        trainer = make_trainer(config, options, max_epochs, callbacks, workdir, monitor=monitor)
        trainer.fit(module, datamodule=datamodule)
    checkpoint = str(Path(workdir) / f"{name}.ckpt")
    trainer.save_checkpoint(checkpoint)
    return FitRun(history, best, checkpoint, max_epochs)


@contextlib.contextmanager
def deterministic_torch(threads: int = 0) -> Iterator[None]:
    """Deterministic torch kernels inside the block; the process-wide flags are restored after.

    ``Trainer(deterministic=True)`` switches torch to deterministic kernels for the whole
    process, so build and fit the Trainer inside this block: scoring code running later
    in the same process should not inherit the flags. Filling uninitialised memory (a
    debugging aid torch enables with deterministic mode) is turned off: it made every
    embedding step ~10x slower on CPU, and no kernel here reads uninitialised memory.
    ``threads`` > 0 sets torch's intra-op threads for the block (small embedding kernels
    run several times faster on one thread than on two contended ones).
    """
    previous_threads = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = fill
        torch.set_num_threads(previous_threads)


def inverse_sqrt_schedule(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Lightning scheduler config: learning rate = base / sqrt(1 + iteration), stepped every batch."""
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda iteration: 1.0 / math.sqrt(1.0 + iteration))
    return {"scheduler": scheduler, "interval": "step", "frequency": 1}


class LazyAdamW(torch.optim.Optimizer):
    """AdamW for dense gradients and lazy Adam for sparse ones, in one optimizer.

    ``nn.Embedding(sparse=True)`` tables get sparse gradients; their moments, weights and
    decoupled weight decay are updated only at the rows a batch touched (as
    ``torch.optim.SparseAdam`` does), so a step costs the batch's rows, not the table's
    (a dense AdamW step over a 100k-user x 64 table measured 60+ ms on 2 cores). Dense
    parameters follow ``torch.optim.AdamW`` exactly. One optimizer, so Lightning's automatic
    optimization, learning-rate schedulers and checkpoints work unchanged.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # noqa: ANN401 - the closure's loss, as torch optimizers return it
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["step"] += 1
                step, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
                step_size = lr / (1.0 - beta1**step)
                bias_root = math.sqrt(1.0 - beta2**step)
                grad = param.grad
                if grad.is_sparse:
                    grad = grad.coalesce()
                    rows, values = grad.indices()[0], grad.values()
                    row_avg = exp_avg[rows].lerp_(values, 1.0 - beta1)
                    row_avg_sq = exp_avg_sq[rows].mul_(beta2).addcmul_(values, values, value=1.0 - beta2)
                    exp_avg[rows] = row_avg
                    exp_avg_sq[rows] = row_avg_sq
                    weights = param[rows]
                    if decay:
                        weights.mul_(1.0 - lr * decay)
                    weights.addcdiv_(row_avg, row_avg_sq.sqrt_().div_(bias_root).add_(eps), value=-step_size)
                    param[rows] = weights
                else:
                    if decay:
                        param.mul_(1.0 - lr * decay)
                    exp_avg.lerp_(grad, 1.0 - beta1)
                    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                    param.addcdiv_(exp_avg, (exp_avg_sq.sqrt() / bias_root).add_(eps), value=-step_size)
        return loss
