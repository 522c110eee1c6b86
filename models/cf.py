"""Collaborative filtering: the design document's embedding dot-product model, trained with BPR.

score(u, a) = <user_embedding[u], app_embedding[a]> + app_bias[a]. Each training
example is a positive pair (u, i) plus one app j drawn uniformly (re-drawn once if it
is a positive of u); the loss is BPR, -log sigmoid(score(u, i) - score(u, j)), plus L2
on the embeddings the batch touched. The epoch kept is the best on validation NDCG@k.

Three pieces, as everywhere in ``models/``: the ``nn.Module`` architecture
(:class:`MatrixFactorization`), the ``LightningModule`` (:class:`BPRModule`: loss,
metric objects, optimiser) and the ``LightningDataModule`` (:class:`BPRDataModule`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytorch_lightning as pl
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import MeanMetric

from models.base import PerUserArraysRecommender, Recommender
from models.common import FitResult, ModelOptions, popularity_scores, shared_positions
from models.data import InteractionData
from models.lit import (
    CpuBatchesMixin,
    EpochMeansMixin,
    EvaluationRows,
    NDCGAtK,
    fit_module,
    inverse_sqrt_schedule,
    seed_everything,
    shuffled_batches,
)
from personalization.config import Config


class MatrixFactorization(nn.Module):
    """User and app embeddings with an app bias; scores are dot products.

    The embeddings have sparse gradients: a batch touches a few thousand rows of tables with
    ``n_users + n_apps`` rows, and a dense gradient and optimizer update over the whole tables
    made each step ~7x slower at 100k users (63 vs 9 ms a step, ``BPRModule`` uses SparseAdam).
    """

    def __init__(self, n_users: int, n_apps: int, embedding_dim: int):
        super().__init__()
        self.user_embedding = nn.Embedding(n_users, embedding_dim, sparse=True)
        self.app_embedding = nn.Embedding(n_apps, embedding_dim, sparse=True)
        self.app_bias = nn.Embedding(n_apps, 1, sparse=True)
        nn.init.normal_(self.user_embedding.weight, std=0.1)
        nn.init.normal_(self.app_embedding.weight, std=0.1)
        nn.init.zeros_(self.app_bias.weight)

    def forward(self, users: torch.Tensor, apps: torch.Tensor) -> torch.Tensor:
        """Scores of aligned (user, app) index pairs, shape ``[b]``."""
        return (self.user_embedding(users) * self.app_embedding(apps)).sum(-1) + self.app_bias(apps).squeeze(-1)

    def all_scores(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of users against every app, ``[b, n_apps]``."""
        return self.user_embedding(users) @ self.app_embedding.weight.T + self.app_bias.weight.T


class BPRModule(EpochMeansMixin, pl.LightningModule):
    """BPR training of :class:`MatrixFactorization`; logs ``train/loss`` and ``val/ndcg@k``."""

    epoch_means = {"train/loss": "train_loss"}

    def __init__(
        self,
        n_users: int,
        n_apps: int,
        embedding_dim: int = 64,
        learning_rate: float = 0.003,
        l2: float = 1e-4,
        k: int = 10,
        schedule: str = "constant",
    ):
        super().__init__()
        self.save_hyperparameters()
        self.net = MatrixFactorization(n_users, n_apps, embedding_dim)
        self.train_loss = MeanMetric()
        self.val_ndcg = NDCGAtK(k)
        # Sorted keys user * n_apps + app of the training positives, for negative re-draws.
        self.register_buffer("positive_keys", torch.zeros(0, dtype=torch.int64), persistent=False)

    def set_positive_keys(self, keys: torch.Tensor) -> None:
        self.positive_keys = keys.to(self.device)

    def _draw_negatives(self, users: torch.Tensor) -> torch.Tensor:
        n_apps = self.hparams.n_apps
        negatives = torch.randint(0, n_apps, users.shape, device=users.device)
        if self.positive_keys.numel():
            # One re-draw for draws that hit a positive: cheap and removes most false negatives.
            keys = users * n_apps + negatives
            found = torch.searchsorted(self.positive_keys, keys).clamp(max=self.positive_keys.numel() - 1)
            clash = self.positive_keys[found] == keys
            negatives[clash] = torch.randint(0, n_apps, (int(clash.sum()),), device=users.device)
        return negatives

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        users, positives = batch
        negatives = self._draw_negatives(users)
        margin = self.net(users, positives) - self.net(users, negatives)
        touched = (
            self.net.user_embedding(users).pow(2).sum(-1)
            + self.net.app_embedding(positives).pow(2).sum(-1)
            + self.net.app_embedding(negatives).pow(2).sum(-1)
        )
        loss = -F.logsigmoid(margin).mean() + self.hparams.l2 * touched.mean()
        self.train_loss.update(loss.detach())
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        scores = self.net.all_scores(batch["users"]).masked_fill(batch["seen"], float("-inf"))
        self.val_ndcg.update(scores, batch["relevant"])
        self.log(f"val/ndcg@{self.hparams.k}", self.val_ndcg, on_step=False, on_epoch=True)

    def configure_optimizers(self):  # noqa: ANN201 - Lightning accepts several return shapes
        # Lazy Adam: moments and weights of the rows a batch touched (every parameter is an embedding).
        optimizer = torch.optim.SparseAdam(list(self.parameters()), lr=self.hparams.learning_rate)
        if self.hparams.schedule == "inverse_sqrt":
            return {"optimizer": optimizer, "lr_scheduler": inverse_sqrt_schedule(optimizer)}
        return optimizer


class BPRDataModule(CpuBatchesMixin, pl.LightningDataModule):
    """Positive pairs of a CSR matrix for training; validation users for NDCG."""

    def __init__(
        self, data: InteractionData, positives: sp.csr_matrix, batch_size: int, seed: int, val_max_users: int = 0
    ):
        super().__init__()
        self.val_max_users = val_max_users
        self.data = data
        self.positives = positives.tocsr()
        self.batch_size = batch_size
        self.seed = seed

    def setup(self, stage: str | None = None) -> None:
        # Idempotent: callers set up first (negative keys need it), then Trainer.fit calls it again.
        if getattr(self, "validation", None) is not None:
            return
        users, apps = self.positives.nonzero()
        self.pairs = TensorDataset(torch.from_numpy(users.astype(np.int64)), torch.from_numpy(apps.astype(np.int64)))
        self.validation = EvaluationRows(self.data, self.val_max_users, self.seed)

    def positive_keys(self) -> torch.Tensor:
        """Sorted user * n_apps + app keys of every training positive (not only the fine-tuned ones)."""
        users, apps = self.data.train.nonzero()
        return torch.from_numpy(np.sort(users.astype(np.int64) * self.data.n_apps + apps))

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return shuffled_batches(self.pairs, self.batch_size, generator)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.validation, batch_size=512, collate_fn=self.validation.collate)


class BPRRecommender(PerUserArraysRecommender):
    """Dot-product scoring from trained factors (numpy; no torch needed at scoring time)."""

    name = "cf_bpr"
    per_user_arrays = ("user_factors",)

    def __init__(
        self,
        user_ids: np.ndarray,
        app_ids: np.ndarray,
        user_factors: np.ndarray,
        app_factors: np.ndarray,
        app_bias: np.ndarray,
        fallback: np.ndarray,
        hparams: dict,
    ):
        self.user_ids = np.asarray(user_ids, dtype=object)
        self.app_ids = np.asarray(app_ids, dtype=object)
        self.user_factors = np.asarray(user_factors, dtype=np.float32)
        self.app_factors = np.asarray(app_factors, dtype=np.float32)
        self.app_bias = np.asarray(app_bias, dtype=np.float32).ravel()
        self.fallback = np.asarray(fallback, dtype=np.float32)
        self.hparams = dict(hparams)
        self.index_users()

    @classmethod
    def from_module(cls, module: BPRModule, data: InteractionData) -> BPRRecommender:
        net = module.net
        return cls(
            data.user_ids,
            data.app_ids,
            net.user_embedding.weight.detach().cpu().numpy(),
            net.app_embedding.weight.detach().cpu().numpy(),
            net.app_bias.weight.detach().cpu().numpy(),
            popularity_scores(data.app_popularity()),
            dict(module.hparams),
        )

    def score(self, user_ids: Sequence[str], history: sp.csr_matrix) -> np.ndarray:
        rows = self.user_rows(user_ids)
        vectors = np.zeros((len(user_ids), self.app_factors.shape[1]), dtype=np.float32)
        known = rows >= 0
        vectors[known] = self.user_factors[rows[known]]
        # Unseen users: fold in as the mean factor of the apps in their history.
        binary = sp.csr_matrix(history, dtype=np.float32, copy=True)
        binary.data[:] = 1.0
        counts = np.asarray(binary.sum(axis=1)).ravel()
        fold_in = ~known & (counts > 0)
        if fold_in.any():
            vectors[fold_in] = np.asarray(binary[fold_in] @ self.app_factors) / counts[fold_in, None]
        scores = vectors @ self.app_factors.T + self.app_bias
        cold = ~known & (counts == 0)
        if cold.any():
            scores[cold] = self.fallback
        return scores.astype(np.float32)



def _warm_start(module: BPRModule, warm: BPRRecommender, data: InteractionData) -> None:
    """Copy the factors of users and apps the previous model knew into the new vocabularies."""
    net = module.net
    with torch.no_grad():
        old, new = shared_positions(warm.user_ids, data.user_ids)
        net.user_embedding.weight[torch.from_numpy(new)] = torch.from_numpy(warm.user_factors[old])
        old, new = shared_positions(warm.app_ids, data.app_ids)
        net.app_embedding.weight[torch.from_numpy(new)] = torch.from_numpy(warm.app_factors[old])
        net.app_bias.weight[torch.from_numpy(new), 0] = torch.from_numpy(warm.app_bias[old])


def fit_cf_bpr(
    data: InteractionData,
    config: Config,
    options: ModelOptions,
    warm_start: Recommender | None = None,
    workdir: str | None = None,
) -> FitResult:
    """Train BPR from scratch, or fine-tune ``warm_start`` (a :class:`BPRRecommender`) on recent data.

    Full: ``training.max_epochs`` epochs at ``training.learning_rate`` over all training
    positives. Incremental: ``incremental_epochs`` epochs over ``data.fine_tune_matrix()``
    with the rate decaying as base / sqrt(1 + iteration).
    """
    training = config.training
    seed_everything(training.seed)
    incremental = isinstance(warm_start, BPRRecommender)
    module = BPRModule(
        n_users=data.n_users,
        n_apps=data.n_apps,
        embedding_dim=warm_start.app_factors.shape[1] if incremental else training.embedding_dim,
        learning_rate=training.learning_rate,
        l2=options.cf_l2,
        k=training.k,
        schedule="inverse_sqrt" if incremental else "constant",
    )
    if incremental:
        _warm_start(module, warm_start, data)
    positives = data.fine_tune_matrix() if incremental else data.train
    datamodule = BPRDataModule(data, positives, training.batch_size, training.seed, options.epoch_val_max_users)
    datamodule.setup()
    module.set_positive_keys(datamodule.positive_keys())
    run = fit_module(config, options, module, datamodule, "cf_bpr", incremental, workdir)
    recommender = BPRRecommender.from_module(module.cpu(), data)
    params = {
        "embedding_dim": module.hparams.embedding_dim,
        "learning_rate": training.learning_rate,
        "l2": options.cf_l2,
        "batch_size": training.batch_size,
        "max_epochs": run.max_epochs,
        "best_epoch": run.best_epoch if run.best_epoch is not None else -1,
        "n_train_pairs": int(positives.nnz),
    }
    return FitResult(
        recommender=recommender,
        params=params,
        history=run.history,
        history_logged=run.logged_to_mlflow,
        checkpoint_path=run.checkpoint_path,
        mode="incremental" if incremental else "full",
    )
