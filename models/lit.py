"""Lightning plumbing shared by the gradient-trained models (cf_bpr, two_tower).

- :class:`NDCGAtK`: a torchmetrics metric object for ``val/ndcg@k`` during training;
- :class:`EvaluationRows`: the validation users (unseen validation positives) as a Dataset;
- :class:`WarmupEMA`: Lightning's ``WeightAveraging`` with the project's moving-average schedule;
- :class:`EpochMetricsLogger`: Lightning's ``MLFlowLogger`` into the model's active nested run;
- :func:`make_trainer`: one deterministic Trainer configuration for every model;
- :func:`fit_module`: the shared fit (Lightning's ``ModelCheckpoint`` keeps the best validation
  epoch, chosen on validation NDCG only; a ``CSVLogger`` records the epoch metrics);
- :func:`inverse_sqrt_schedule`: the incremental-training rate base / sqrt(1 + iteration);
- :class:`LazyAdamW`: AdamW for dense parameters, lazy Adam for sparse embedding gradients.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import scipy.sparse as sp
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, WeightAveraging
from pytorch_lightning.loggers import CSVLogger, Logger, MLFlowLogger
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, TensorDataset
from torchmetrics import Metric

from models.common import ModelOptions
from models.data import InteractionData
from models.evaluation import evaluation_users, mlflow_metric_name, sample_evaluation_users
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


#: Weights per step of the automatic weight-average update interval (see :func:`ema_interval`).
EMA_WEIGHTS_PER_STEP = 2_000_000


def ema_interval(module: torch.nn.Module, configured: int) -> int:
    """Steps between weight-average updates: ``configured`` if > 0, else one step per 2M weights
    (rounded up), so an update stays a small share of a step (ml-100k: 1; medium: 4)."""
    if configured > 0:
        return configured
    return max(1, math.ceil(sum(p.numel() for p in module.parameters()) / EMA_WEIGHTS_PER_STEP))


class WarmupEMA(WeightAveraging):
    """Lightning's weight averaging with an exponential moving average that starts from the initial weights.

    Lightning's :class:`~pytorch_lightning.callbacks.WeightAveraging` keeps the average in a
    torch ``AveragedModel``, validates on it (swapped in for each validation epoch), puts it in
    the checkpoints' ``state_dict`` (the raw weights under ``current_model_state``) and leaves it
    in the module when training ends. This subclass only chooses the update rule:

    - after every ``every``-th optimizer step ``ema = d * ema + (1 - d) * weights`` with
      ``d = decay ** every`` (the same time horizon as updating every step), one fused
      ``torch._foreach_lerp_`` over the parameters. One update reads and writes every weight,
      ~25 ms for the 7.7M weights of the two-tower at medium against a 47 ms step;
    - the average starts at the weights the fit starts from (``AveragedModel`` would copy the
      weights at its first update instead), so without warm-up it keeps ``decay ** steps`` of the
      starting weights: a shrinkage towards them (5-10% after ml-100k's ~2,500 steps at 0.999,
      nearly all of a tiny run's), and a fine-tuning run stays near the warm-started weights;
    - with ``warmup`` the ``u``-th update (from 0) uses ``min(decay ** every, (1 + u) / (10 + u))``:
      early updates follow the weights closely, so the first epochs' validation (and a short
      fine-tuning run on a small day) is not dominated by the starting weights (TensorFlow's
      ``ExponentialMovingAverage(num_updates=...)`` does the same; Lightning's
      ``EMAWeightAveraging`` has no warm-up).

    Only parameters are averaged (``use_buffers=False``): the modules' buffers are fixed inputs
    (catalogue tensors, positive keys) that the average keeps a copy of. The average lives on
    the device the module trains on.
    """

    def __init__(self, decay: float, every: int = 1, warmup: bool = True):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        if every < 1:
            raise ValueError(f"EMA update interval must be >= 1 step, got {every}")
        super().__init__(use_buffers=False, multi_avg_fn=self._lerp)
        self.decay = decay
        self.every = every
        self.warmup = warmup
        self._update = 0  # index (from 0) of the update the current step makes, if it makes one

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """After every ``every``-th optimizer step (``step_idx`` counts from 0); never at an epoch's end."""
        return step_idx is not None and (step_idx + 1) % self.every == 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # The module is still on the CPU when callbacks are set up: keep the average where it will train.
        self._device = trainer.strategy.root_device
        super().setup(trainer, pl_module, stage)
        if self._average_model is not None:
            # The average holds a copy of the starting weights; counting it as one sample makes the
            # first update average with it instead of overwriting it.
            self._average_model.n_averaged.fill_(1)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._update = trainer.global_step // self.every - 1
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _lerp(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _num_averaged: Any) -> None:
        """``AveragedModel``'s ``multi_avg_fn``: one EMA update of a group of same-dtype tensors."""
        decay = self.decay**self.every
        if self.warmup:
            decay = min(decay, (1.0 + self._update) / (10.0 + self._update))
        if averaged and averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1.0 - decay)  # ema + (1 - d) * (w - ema)
        else:
            torch._foreach_copy_(averaged, current)


class EpochMetricsLogger(MLFlowLogger):
    """Lightning's ``MLFlowLogger`` writing the epoch metrics into the MLflow run already active.

    The run is the model's nested run that :func:`models.train.train` opened (``run_id``), so:

    - metric names are the run's other names (:func:`models.evaluation.mlflow_metric_name`:
      ``val/ndcg@10`` -> ``val/ndcg_at_10``; ``MLFlowLogger`` alone would drop the ``@``);
    - the step (the x-axis of MLflow's charts) is the epoch, counted from 0, not the optimizer
      step: epochs of runs with different batch sizes line up; non-finite values are skipped;
    - hyperparameters are not logged here (``train`` logs the fit's parameters; the module's
      hparams under the same keys could clash, and MLflow parameters cannot change);
    - finishing the fit leaves the run open: the ``with mlflow.start_run()`` that opened it ends it.
    """

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        return

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        epoch = metrics.get("epoch")
        renamed = {
            mlflow_metric_name(name): float(value)
            for name, value in metrics.items()
            if name != "epoch" and np.isfinite(value)
        }
        if renamed:
            super().log_metrics(renamed, step=int(epoch) if epoch is not None else step)

    def finalize(self, status: str = "success") -> None:
        return


def epoch_history(metrics_csv: str | os.PathLike[str]) -> list[dict[str, float]]:
    """One row per epoch (``{"epoch": 0.0, "train/loss": .., "val/ndcg@10": ..}``) from a ``CSVLogger``'s
    ``metrics.csv``, whose rows (one per logging call: training losses, then validation) are merged by epoch."""
    path = Path(metrics_csv)
    if not path.exists():
        return []
    epochs: dict[float, dict[str, float]] = {}
    with open(path, newline="") as handle:
        for line in csv.DictReader(handle):
            if not line.get("epoch"):
                continue
            epoch = float(line["epoch"])
            row = epochs.setdefault(epoch, {"epoch": epoch})
            row.update({name: float(value) for name, value in line.items() if name not in ("epoch", "step") and value})
    return [epochs[epoch] for epoch in sorted(epochs)]


def make_trainer(
    config: Config,
    options: ModelOptions,
    max_epochs: int,
    callbacks: list[pl.Callback],
    root_dir: str,
    monitor: str | None = None,
    loggers: list[Logger] | None = None,
) -> pl.Trainer:
    """A deterministic, quiet Trainer; early stopping on ``monitor`` when patience > 0.

    Build and fit it inside :func:`deterministic_torch`. ``callbacks`` may hold a ``ModelCheckpoint``.
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
        logger=loggers or False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
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

    #: One row per epoch of the metrics the module logged (see :func:`epoch_history`).
    history: list[dict[str, float]]
    #: The epoch whose weights the module holds (the best validation epoch, else the last), and its score.
    best_epoch: int | None
    best_score: float | None
    #: Lightning checkpoint of those weights (``Module.load_from_checkpoint`` restores them).
    checkpoint_path: str
    max_epochs: int
    #: Whether the epoch metrics went to the active MLflow run (:class:`EpochMetricsLogger`).
    logged_to_mlflow: bool = False


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
    """Fit ``module`` deterministically and leave it with the best validation epoch's weights.

    ``datamodule`` must be set up and expose ``validation`` (the validation users).
    ``threads`` overrides ``options.train_threads`` (torch intra-op threads; 0 = torch's default).
    ``ema_decay`` > 0 validates and keeps an exponential moving average of the weights, updated every
    ``ema_every`` steps (0: :func:`ema_interval` of the module's size), with or without warm-up
    (:class:`WarmupEMA`).

    Lightning's built-ins do the work: ``ModelCheckpoint`` keeps ``<name>.ckpt`` of the best
    ``val/ndcg@k`` epoch in ``<workdir>/<name>-checkpoint/`` (the weights; with a weight average, a
    full checkpoint whose state_dict is the average that epoch validated), reloaded into the module
    after the fit; without validation users the last epoch is kept. A ``CSVLogger`` under
    ``<workdir>/<name>-logs`` records the epoch metrics (:attr:`FitRun.history`), and when an MLflow run
    is active an :class:`EpochMetricsLogger` logs them to it.
    """
    training = config.training
    # Without validation users (e.g. fit_predict on a bare training file) the last epoch is kept.
    monitor = f"val/ndcg@{training.k}" if len(datamodule.validation) else None
    workdir = workdir or tempfile.mkdtemp(prefix=f"{name}-")
    max_epochs = options.incremental_epochs if incremental else training.max_epochs
    # Weights only (a third of a full checkpoint with LazyAdamW's two moments: a save costs ~2% of a
    # medium BPR epoch), except with a weight average: Lightning's WeightAveraging puts the average
    # in the state_dict of full checkpoints only (the raw weights go under current_model_state).
    averaging = ema_decay > 0
    best = ModelCheckpoint(
        dirpath=Path(workdir) / f"{name}-checkpoint", filename=name, monitor=monitor, mode="max", save_top_k=1,
        save_weights_only=not averaging,
    )
    callbacks: list[pl.Callback] = [best]
    if averaging:
        callbacks.append(WarmupEMA(ema_decay, ema_interval(module, ema_every), ema_warmup))
    csv_logger = CSVLogger(workdir, name=f"{name}-logs")
    loggers: list[Logger] = [csv_logger]
    import mlflow  # here, not at the top: unpickling a model imports this module, and needs no MLflow

    active = mlflow.active_run()
    if active is not None:
        loggers.append(EpochMetricsLogger(run_id=active.info.run_id, tracking_uri=mlflow.get_tracking_uri()))
    with deterministic_torch(options.train_threads if threads is None else threads), warnings.catch_warnings():
        # The modules log once per epoch (EpochMeansMixin): Lightning's step-logging interval does not apply.
        warnings.filterwarnings("ignore", message="The number of training batches .* logging interval")
        trainer = make_trainer(config, options, max_epochs, callbacks, workdir, monitor=monitor, loggers=loggers)
        trainer.fit(module, datamodule=datamodule)
        if best.best_model_path:
            checkpoint = torch.load(best.best_model_path, map_location=module.device, weights_only=False)
            module.load_state_dict(checkpoint["state_dict"])
            best_epoch, checkpoint_path = int(checkpoint["epoch"]), best.best_model_path
        else:
            # fast_dev_run: Lightning saves no checkpoint and logs nothing; the one epoch is kept.
            best_epoch, checkpoint_path = 0, str(Path(best.dirpath) / f"{name}.ckpt")
            trainer.save_checkpoint(checkpoint_path, weights_only=not averaging)
    score = best.best_model_score if best.best_model_score is not None else trainer.callback_metrics.get(monitor or "")
    if trainer.fast_dev_run:
        history = [{"epoch": 0.0, **_scalars(trainer.callback_metrics)}]
    else:
        history = epoch_history(Path(csv_logger.log_dir) / "metrics.csv")
    return FitRun(
        history=history,
        best_epoch=best_epoch,
        best_score=float(score) if monitor and score is not None else None,
        checkpoint_path=checkpoint_path,
        max_epochs=max_epochs,
        logged_to_mlflow=any(isinstance(logger, EpochMetricsLogger) for logger in trainer.loggers),
    )


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The one-element tensors of ``metrics`` as floats."""
    return {name: float(value) for name, value in metrics.items() if torch.is_tensor(value) and value.numel() == 1}


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
