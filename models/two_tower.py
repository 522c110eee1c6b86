"""The deep personalization model of the design document: two towers + interaction MLP.

Architecture (:class:`TwoTowerNet`):
- user tower: MLP over [user-id embedding, history bag (sum of embeddings of the apps
  in the user's history / sqrt(n)), segment embedding, standardised numeric profile
  features] -> ``embedding_dim``;
- app tower: MLP over [app-id embedding, category embedding, standardised numeric
  features (price, rating, popularity, freshness, age rating), text vector] -> ``embedding_dim``;
- interaction: an MLP over the concatenated tower outputs, added to their dot product:
  ``logit = <u, a> + MLP([u; a])`` and ``p = sigmoid(logit)``.

Training (:class:`TwoTowerModule`): the tower dot products learn retrieval with a
softmax over the whole catalogue (the user's other known positives masked out), or,
for catalogues above ``tt_full_softmax_max_apps``, over a batch-shared set of
uniformly sampled apps; the full logit (dot + interaction MLP) learns ranking with a
pointwise BCE on positives (1), explicit negatives = ignored impressions (0) and a few
of the sampled apps per positive (0). A training example's history bag leaves out its
target app and drops a share of the other apps (denoising), and ids are dropped at
random so that users and apps never seen in training (id 0) get sensible vectors
from their history and features.

Scoring: the interaction MLP's first layer splits into a user part and an app part,
so the full MLP over every (user, app) pair costs ``b x n_apps x hidden`` additions;
catalogues up to ``tt_full_mlp_max_apps`` are scored that way (exact). Larger ones
are scored in two stages: dot-product retrieval of ``tt_retrieval_pool``
candidates from the tower embeddings, then the MLP re-ranks those; the other apps
keep their dot-product order below every candidate. Scores are logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchmetrics import MeanMetric

from jobs import columns as C
from models.base import Recommender
from models.common import FitResult, ModelOptions, shared_positions
from models.content import _text_matrix
from models.data import APP_NUMERIC_COLUMNS, InteractionData
from models.lit import (
    CpuBatchesMixin,
    EpochMeansMixin,
    EvaluationRows,
    LazyAdamW,
    NDCGAtK,
    fit_module,
    inverse_sqrt_schedule,
    seed_everything,
)
from personalization.config import Config

#: Heavy-tailed app columns are log1p-transformed before standardisation.
LOG_COLUMNS = ("price", "pop_7d", "pop_30d", "freshness_days")
SIDE_EMBEDDING_DIM = 16
#: Pair-MLP elements (rows x apps x hidden) computed at once when scoring; bounds memory (~64 MB).
PAIR_CHUNK_ELEMENTS = 16_000_000


# ------------------------------------------------------------------ features
def _standardise(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = np.nanmean(values, axis=0) if values.size else np.zeros(values.shape[1])
    std = np.nanstd(values, axis=0) if values.size else np.ones(values.shape[1])
    std = np.where(std > 0, std, 1.0)
    mean = np.nan_to_num(mean)
    return np.nan_to_num((values - mean) / std).astype(np.float32), mean, std


@dataclass
class TowerFeatures:
    """Side inputs of both towers, aligned with the training vocabularies.

    Index 0 of every id-like column means "unknown" (cold user or app, missing value).
    """

    user_ids: np.ndarray
    app_ids: np.ndarray
    user_id_index: np.ndarray  # int64 [n_users]: row + 1 for users with training history, else 0
    user_segment: np.ndarray  # int64 [n_users]
    user_numeric: np.ndarray  # float32 [n_users, n_user_numeric]
    app_id_index: np.ndarray  # int64 [n_apps]: column + 1 for apps with training interactions, else 0
    app_category: np.ndarray  # int64 [n_apps]
    app_numeric: np.ndarray  # float32 [n_apps, n_app_numeric]
    app_text: np.ndarray  # float32 [n_apps, text_dim] (text_dim may be 0)
    segments: list[str]
    categories: list[str]

    @classmethod
    def from_data(cls, data: InteractionData) -> TowerFeatures:
        trained_users = data.train.getnnz(axis=1) > 0
        trained_apps = data.train.getnnz(axis=0) > 0
        segments: list[str] = []
        user_segment = np.zeros(data.n_users, dtype=np.int64)
        if data.user_segments is not None:
            names = pd.Series(data.user_segments, dtype=object)
            segments = sorted({str(name) for name in names.dropna()})
            lookup = {name: position + 1 for position, name in enumerate(segments)}
            user_segment = np.array(
                [lookup.get(str(name), 0) if name is not None else 0 for name in names], dtype=np.int64
            )
        # Indexed categorical columns (``*_idx``: vocabulary or hash-bucket numbers) and the
        # segment id are labels, not magnitudes: they stay out of the standardised block.
        numeric_user_columns = [
            name for name in data.user_features.columns if not str(name).endswith("_idx") and name != "segment_id"
        ]
        user_numeric, _, _ = _standardise(data.user_features[numeric_user_columns].to_numpy(dtype=np.float64))
        categories: list[str] = []
        app_category = np.zeros(data.n_apps, dtype=np.int64)
        if C.CATEGORY in data.app_features.columns:
            raw = data.app_features[C.CATEGORY]
            categories = sorted({str(value) for value in raw.dropna()})
            lookup = {name: position + 1 for position, name in enumerate(categories)}
            app_category = np.array([0 if pd.isna(v) else lookup[str(v)] for v in raw], dtype=np.int64)
        numeric_columns = [name for name in APP_NUMERIC_COLUMNS if name in data.app_features.columns]
        numeric = data.app_features[numeric_columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        for position, name in enumerate(numeric_columns):
            if name in LOG_COLUMNS:
                numeric[:, position] = np.log1p(np.clip(numeric[:, position], 0, None))
        app_numeric, _, _ = _standardise(numeric.reshape(data.n_apps, len(numeric_columns)))
        text = _text_matrix(data.app_features)
        return cls(
            user_ids=data.user_ids,
            app_ids=data.app_ids,
            user_id_index=np.where(trained_users, np.arange(data.n_users) + 1, 0).astype(np.int64),
            user_segment=user_segment,
            user_numeric=user_numeric,
            app_id_index=np.where(trained_apps, np.arange(data.n_apps) + 1, 0).astype(np.int64),
            app_category=app_category,
            app_numeric=app_numeric,
            app_text=text if text is not None else np.zeros((data.n_apps, 0), dtype=np.float32),
            segments=segments,
            categories=categories,
        )

    def sizes(self) -> dict[str, int]:
        """Hyperparameters of the network that depend on the data."""
        return {
            "n_users": len(self.user_ids),
            "n_apps": len(self.app_ids),
            "n_segments": len(self.segments),
            "n_categories": len(self.categories),
            "n_user_numeric": int(self.user_numeric.shape[1]),
            "n_app_numeric": int(self.app_numeric.shape[1]),
            "text_dim": int(self.app_text.shape[1]),
        }

    def app_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "app_id": torch.from_numpy(self.app_id_index),
            "category": torch.from_numpy(self.app_category),
            "numeric": torch.from_numpy(self.app_numeric),
            "text": torch.from_numpy(self.app_text),
        }


def history_bags(
    history: sp.csr_matrix,
    rows: np.ndarray,
    exclude: np.ndarray | None = None,
    dropout: float = 0.0,
    rng: np.random.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EmbeddingBag inputs ``(indices, offsets, weights)`` of the given history rows.

    ``exclude[e]`` (an app column, or -1) is left out of bag ``e``; with ``dropout`` > 0
    each remaining item is dropped with that probability. Weights are 1 / sqrt(bag size).
    """
    indptr, indices = history.indptr, history.indices
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts
    owner = np.repeat(np.arange(len(rows)), lengths)
    # Position of every bag element inside the CSR indices array.
    positions = np.repeat(starts - np.r_[0, np.cumsum(lengths)[:-1]], lengths) + np.arange(lengths.sum())
    items = indices[positions].astype(np.int64)
    keep = np.ones(len(items), dtype=bool)
    if exclude is not None:
        keep &= items != np.repeat(exclude, lengths)
    if dropout > 0 and rng is not None:
        keep &= rng.random(len(items)) >= dropout
    items, owner = items[keep], owner[keep]
    sizes = np.bincount(owner, minlength=len(rows))
    offsets = np.r_[0, np.cumsum(sizes)[:-1]].astype(np.int64)
    weights = (1.0 / np.sqrt(np.maximum(sizes, 1)))[owner].astype(np.float32)
    return torch.from_numpy(items), torch.from_numpy(offsets), torch.from_numpy(weights)


# ------------------------------------------------------------------ architecture
class FastDropout(nn.Module):
    """Inverted dropout (as ``nn.Dropout``) whose CPU mask comes from numpy's PCG64 generator.

    Torch's CPU ``bernoulli_`` draws about 65M values/s on one thread; at the medium catalogue
    the two-tower's five dropout masks (~1M values a step) took 22% of a training step
    (torch.profiler). numpy draws the same mask about 10x faster. The numpy seed is drawn
    from torch's global generator, so ``seed_everything`` still fixes every mask. On an
    accelerator ``F.dropout`` applies. No parameters: checkpoints match ``nn.Dropout``'s.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return inputs
        if inputs.device.type != "cpu":
            return F.dropout(inputs, self.p, training=True)
        seed = int(torch.randint(0, 2**62, (1,)).item())
        keep = np.random.default_rng(seed).random(tuple(inputs.shape), dtype=np.float32) >= self.p
        scale = torch.from_numpy(keep).to(inputs.dtype).mul_(1.0 / (1.0 - self.p))
        return inputs * scale

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _mlp(in_features: int, hidden: int, out_features: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.ReLU(), FastDropout(dropout), nn.Linear(hidden, out_features)
    )


class TwoTowerNet(nn.Module):
    """User tower, app tower and the interaction MLP (sizes only; no data inside)."""

    def __init__(
        self,
        n_users: int,
        n_apps: int,
        n_segments: int,
        n_categories: int,
        n_user_numeric: int,
        n_app_numeric: int,
        text_dim: int,
        embedding_dim: int = 64,
        hidden_dim: int = 128,
        dropout: float = 0.2,
    ):
        super().__init__()
        d, side = embedding_dim, SIDE_EMBEDDING_DIM
        # The id tables get sparse gradients: a batch touches a few of their rows, and
        # LazyAdamW updates only those (a dense step over 100k users x 64 cost 60+ ms).
        self.user_id_embedding = nn.Embedding(n_users + 1, d, sparse=True)
        self.history_embedding = nn.EmbeddingBag(n_apps, d, mode="sum", sparse=True)
        self.segment_embedding = nn.Embedding(n_segments + 1, side)
        self.app_id_embedding = nn.Embedding(n_apps + 1, d, sparse=True)
        self.category_embedding = nn.Embedding(n_categories + 1, side)
        self.user_tower = _mlp(2 * d + side + n_user_numeric, hidden_dim, d, dropout)
        self.app_tower = _mlp(d + side + n_app_numeric + text_dim, hidden_dim, d, dropout)
        # Interaction MLP over [u; a]; its first layer is split so pair scores decompose.
        self.interaction_user = nn.Linear(d, hidden_dim)
        self.interaction_app = nn.Linear(d, hidden_dim, bias=False)
        self.interaction_out = nn.Linear(hidden_dim, 1)
        self.interaction_dropout = FastDropout(dropout)
        for table in (self.user_id_embedding, self.history_embedding, self.app_id_embedding):
            nn.init.normal_(table.weight, std=0.05)

    def user_vectors(
        self,
        user_id: torch.Tensor,
        bag: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        segment: torch.Tensor,
        numeric: torch.Tensor,
    ) -> torch.Tensor:
        indices, offsets, weights = bag
        pooled = self.history_embedding(indices, offsets, per_sample_weights=weights)
        inputs = [self.user_id_embedding(user_id), pooled, self.segment_embedding(segment), numeric]
        return self.user_tower(torch.cat(inputs, dim=1))

    def app_vectors(
        self, app_id: torch.Tensor, category: torch.Tensor, numeric: torch.Tensor, text: torch.Tensor
    ) -> torch.Tensor:
        inputs = [self.app_id_embedding(app_id), self.category_embedding(category), numeric, text]
        return self.app_tower(torch.cat(inputs, dim=1))

    def logits(self, users: torch.Tensor, apps: torch.Tensor) -> torch.Tensor:
        """Logits of aligned pairs: ``users`` and ``apps`` broadcast to ``[..., d]`` -> ``[...]``."""
        hidden = F.relu(self.interaction_user(users) + self.interaction_app(apps))
        mlp = self.interaction_out(self.interaction_dropout(hidden)).squeeze(-1)
        return (users * apps).sum(-1) + mlp

    def pair_logits(self, users: torch.Tensor, apps: torch.Tensor) -> torch.Tensor:
        """Logits of every user against every app: ``[b, d] x [n, d] -> [b, n]``, chunked over users."""
        user_part = self.interaction_user(users)
        app_part = self.interaction_app(apps)
        w_out = self.interaction_out.weight.squeeze(0)
        rows_per_chunk = max(1, PAIR_CHUNK_ELEMENTS // max(1, apps.shape[0] * app_part.shape[1]))
        chunks = []
        for start in range(0, users.shape[0], rows_per_chunk):
            hidden = F.relu(user_part[start : start + rows_per_chunk, None, :] + app_part[None, :, :])
            hidden = self.interaction_dropout(hidden)
            chunks.append(hidden @ w_out)
        mlp = torch.cat(chunks, dim=0) + self.interaction_out.bias
        return users @ apps.T + mlp


def catalogue_logits(net: TwoTowerNet, users: torch.Tensor, app_vectors: torch.Tensor, pool: int) -> torch.Tensor:
    """Scores ``[b, n_apps]`` of users against the catalogue, as served.

    ``pool`` = 0 (or >= n_apps): the full logit for every pair. Otherwise two stages: the
    ``pool`` best apps by tower dot product are re-scored with the full logit, and the other
    apps keep their dot-product order, strictly below every candidate.
    """
    n_apps = app_vectors.shape[0]
    if pool <= 0 or pool >= n_apps:
        return net.pair_logits(users, app_vectors)
    dots = users @ app_vectors.T
    candidates = torch.topk(dots, pool, dim=1).indices
    # [b, 1, d] against [b, pool, d]: one batched pass instead of a loop over users.
    reranked = net.logits(users[:, None, :], app_vectors[candidates])
    floor = reranked.min(dim=1, keepdim=True).values - 1.0
    spread = (dots.max(dim=1, keepdim=True).values - dots) / (dots.std(dim=1, keepdim=True) + 1e-6)
    scores = floor - torch.log1p(spread)
    return scores.scatter_(1, candidates, reranked)


# ------------------------------------------------------------------ Lightning
class TwoTowerModule(EpochMeansMixin, pl.LightningModule):
    """Training of :class:`TwoTowerNet`: sampled softmax + pointwise BCE; ``val/ndcg@k`` on full scores."""

    epoch_means = {"train/loss": "train_loss", "train/softmax_loss": "train_softmax", "train/bce_loss": "train_bce"}

    def __init__(
        self,
        n_users: int,
        n_apps: int,
        n_segments: int = 0,
        n_categories: int = 0,
        n_user_numeric: int = 0,
        n_app_numeric: int = 0,
        text_dim: int = 0,
        embedding_dim: int = 64,
        hidden_dim: int = 128,
        dropout: float = 0.2,
        learning_rate: float = 0.003,
        weight_decay: float = 1e-5,
        sampled_negatives: int = 0,
        bce_weight: float = 0.5,
        pointwise_negatives: int = 4,
        id_dropout: float = 0.1,
        lr_decay: float = 1.0,
        k: int = 10,
        schedule: str = "constant",
        candidate_pool: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.net = TwoTowerNet(
            n_users,
            n_apps,
            n_segments,
            n_categories,
            n_user_numeric,
            n_app_numeric,
            text_dim,
            embedding_dim,
            hidden_dim,
            dropout,
        )
        self.train_loss = MeanMetric()
        self.train_softmax = MeanMetric()
        self.train_bce = MeanMetric()
        self.val_ndcg = NDCGAtK(k)
        # App-side inputs for the whole catalogue: data, so non-persistent buffers (not in checkpoints).
        for name in ("app_id", "category", "numeric", "text"):
            self.register_buffer(f"catalog_{name}", torch.zeros(0), persistent=False)
        self._catalog_vectors: torch.Tensor | None = None

    def set_catalog(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, tensor in tensors.items():
            setattr(self, f"catalog_{name}", tensor.to(self.device))

    def _app_vectors(self, columns: torch.Tensor, id_dropout: float = 0.0) -> torch.Tensor:
        app_id = self.catalog_app_id[columns]
        if id_dropout > 0:
            app_id = app_id.masked_fill(torch.rand(app_id.shape, device=app_id.device) < id_dropout, 0)
        return self.net.app_vectors(
            app_id, self.catalog_category[columns], self.catalog_numeric[columns], self.catalog_text[columns]
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        id_dropout = self.hparams.id_dropout
        user_id = batch["user_id"].masked_fill(torch.rand(batch["user_id"].shape, device=self.device) < id_dropout, 0)
        users = self.net.user_vectors(
            user_id,
            (batch["bag_indices"], batch["bag_offsets"], batch["bag_weights"]),
            batch["segment"],
            batch["user_numeric"],
        )
        apps = self._app_vectors(batch["app"], id_dropout)
        labels = batch["label"]
        positive = labels > 0.5
        n_apps, n_sampled = self.hparams.n_apps, self.hparams.sampled_negatives
        full_softmax = n_sampled <= 0 or n_sampled >= n_apps
        if full_softmax:
            sampled = torch.arange(n_apps, device=self.device)
        else:
            sampled = torch.randint(0, n_apps, (n_sampled,), device=self.device)
        sampled_vectors = self._app_vectors(sampled, id_dropout)
        # Retrieval loss: softmax of the tower dot products over the whole catalogue, or over
        # a batch-shared uniform sample for big catalogues.
        positive_users = users[positive]
        positive_dots = (positive_users * apps[positive]).sum(-1)
        sampled_dots = positive_users @ sampled_vectors.T
        # Not negatives: the target itself, and (full softmax) the user's other known positives.
        hits = sampled[None, :] == batch["app"][positive][:, None]
        if full_softmax:
            hits[batch["known_rows"], batch["known_cols"]] = True
        softmax_logits = torch.cat([positive_dots[:, None], sampled_dots.masked_fill(hits, float("-inf"))], dim=1)
        targets = torch.zeros(int(positive.sum()), dtype=torch.long, device=self.device)
        softmax = F.cross_entropy(softmax_logits, targets)
        # Ranking loss: pointwise BCE of the full logit (dot + interaction MLP) on positives,
        # explicit negatives and a few of the sampled apps per positive.
        n_extra = self.hparams.pointwise_negatives
        pick = torch.randint(0, sampled.numel(), (positive_users.shape[0], n_extra), device=self.device)
        extra_logits = self.net.logits(
            positive_users.repeat_interleave(n_extra, dim=0), sampled_vectors[pick.reshape(-1)]
        )
        extra_is_negative = ~hits.gather(1, pick).reshape(-1)
        logits = torch.cat([self.net.logits(users, apps), extra_logits[extra_is_negative]])
        targets_bce = torch.cat([labels, torch.zeros(int(extra_is_negative.sum()), device=self.device)])
        bce = F.binary_cross_entropy_with_logits(logits, targets_bce)
        loss = softmax + self.hparams.bce_weight * bce
        self.train_loss.update(loss.detach())
        self.train_softmax.update(softmax.detach())
        self.train_bce.update(bce.detach())
        return loss

    def on_validation_epoch_start(self) -> None:
        columns = torch.arange(self.hparams.n_apps, device=self.device)
        self._catalog_vectors = self._app_vectors(columns)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        users = self.net.user_vectors(
            batch["user_id"],
            (batch["bag_indices"], batch["bag_offsets"], batch["bag_weights"]),
            batch["segment"],
            batch["user_numeric"],
        )
        # Scored as served: the full logit, or two stages for a large catalogue (candidate_pool > 0).
        scores = catalogue_logits(self.net, users, self._catalog_vectors, self.hparams.candidate_pool)
        scores = scores.masked_fill(batch["seen"], float("-inf"))
        self.val_ndcg.update(scores, batch["relevant"])
        self.log(f"val/ndcg@{self.hparams.k}", self.val_ndcg, on_step=False, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        self._catalog_vectors = None

    def configure_optimizers(self):  # noqa: ANN201 - Lightning accepts several return shapes
        optimizer = LazyAdamW(self.parameters(), lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay)
        if self.hparams.schedule == "inverse_sqrt":
            return {"optimizer": optimizer, "lr_scheduler": inverse_sqrt_schedule(optimizer)}
        if self.hparams.lr_decay < 1.0:
            # Per-epoch decay: the schedule does not depend on max_epochs, so a refit with the
            # epoch count chosen on validation follows the same rates.
            scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=self.hparams.lr_decay)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
        return optimizer


class _Positions(Dataset):
    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, position: int) -> int:
        return position


class TwoTowerDataModule(CpuBatchesMixin, pl.LightningDataModule):
    """Training examples (positives + explicit negatives) and validation users, with history bags."""

    def __init__(
        self,
        data: InteractionData,
        features: TowerFeatures,
        positives: sp.csr_matrix,
        batch_size: int,
        seed: int,
        history_dropout: float,
        val_max_users: int = 0,
        max_epoch_examples: int = 0,
    ):
        super().__init__()
        self.data = data
        self.features = features
        self.val_max_users = val_max_users
        self.max_epoch_examples = max_epoch_examples
        self.positives = positives.tocsr()
        self.batch_size = batch_size
        self.seed = seed
        self.history_dropout = history_dropout

    def setup(self, stage: str | None = None) -> None:
        # Idempotent: callers set up first (sizes come from it), then Trainer.fit calls it again.
        if getattr(self, "validation", None) is not None:
            return
        self.history = self.data.train.tocsr()
        self.pos_users, self.pos_apps = (a.astype(np.int64) for a in self.positives.nonzero())
        self.neg_users, self.neg_apps = (a.astype(np.int64) for a in self.data.negatives.tocsr().nonzero())
        # Explicit negatives per positive in a batch: all of them seen about once per epoch.
        self.negative_ratio = min(1.0, len(self.neg_users) / max(len(self.pos_users), 1))
        self.rng = np.random.default_rng(self.seed)
        self.validation = EvaluationRows(self.data, self.val_max_users, self.seed)

    def _user_inputs(self, rows: np.ndarray, exclude: np.ndarray | None, dropout: float) -> dict[str, torch.Tensor]:
        indices, offsets, weights = history_bags(self.history, rows, exclude, dropout, self.rng)
        return {
            "user_id": torch.from_numpy(self.features.user_id_index[rows]),
            "segment": torch.from_numpy(self.features.user_segment[rows]),
            "user_numeric": torch.from_numpy(self.features.user_numeric[rows]),
            "bag_indices": indices,
            "bag_offsets": offsets,
            "bag_weights": weights,
        }

    def collate_train(self, positions: list[int]) -> dict[str, torch.Tensor]:
        chosen = np.asarray(positions, dtype=np.int64)
        users, apps = self.pos_users[chosen], self.pos_apps[chosen]
        labels = np.ones(len(chosen), dtype=np.float32)
        n_negative = int(round(len(chosen) * self.negative_ratio))
        if n_negative:
            picked = self.rng.integers(0, len(self.neg_users), n_negative)
            users = np.r_[users, self.neg_users[picked]]
            apps = np.r_[apps, self.neg_apps[picked]]
            labels = np.r_[labels, np.zeros(n_negative, dtype=np.float32)]
        # A positive's own app is left out of its history bag (else the model learns to copy).
        batch = self._user_inputs(users, apps, self.history_dropout)
        # (example row, app) of each positive's other training positives, masked out of the softmax.
        known_indices, known_offsets, _ = history_bags(self.history, users[: len(chosen)], apps[: len(chosen)])
        sizes = np.diff(np.r_[known_offsets.numpy(), len(known_indices)])
        batch["known_rows"] = torch.from_numpy(np.repeat(np.arange(len(chosen)), sizes))
        batch["known_cols"] = known_indices
        batch["app"] = torch.from_numpy(apps)
        batch["label"] = torch.from_numpy(labels)
        return batch

    def collate_validation(self, positions: list[int]) -> dict[str, torch.Tensor]:
        batch = self.validation.collate(positions)
        batch.update(self._user_inputs(batch["users"].numpy(), None, 0.0))
        return batch

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        positions = _Positions(len(self.pos_users))
        per_epoch = len(positions)
        if self.max_epoch_examples > 0:
            per_epoch = min(per_epoch, self.max_epoch_examples)
        # A fresh random subset of the positives each epoch when capped; uncapped, the same
        # batches as ``shuffle=True`` (one generator drives the loader and the sampler).
        sampler = RandomSampler(positions, num_samples=per_epoch, generator=generator)
        return DataLoader(
            positions,
            batch_size=self.batch_size,
            sampler=sampler,
            generator=generator,
            collate_fn=self.collate_train,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.validation, batch_size=256, collate_fn=self.collate_validation)


# ------------------------------------------------------------------ recommender
class TwoTowerRecommender(Recommender):
    """Scores with the trained towers; unseen users are represented by their history alone."""

    name = "two_tower"

    def __init__(self, net: TwoTowerNet, features: TowerFeatures, hparams: dict):
        self.net = net.cpu().eval()
        self.features = features
        self.user_ids = features.user_ids
        self.app_ids = features.app_ids
        #: ``hparams["candidate_pool"]`` (0: full MLP over the catalogue, else two-stage) was decided once,
        #: at training, so epoch validation and serving score the same way.
        self.hparams = dict(hparams)
        with torch.no_grad():
            tensors = features.app_tensors()
            self.app_vectors = self.net.app_vectors(
                tensors["app_id"], tensors["category"], tensors["numeric"], tensors["text"]
            )
        self._user_rows = self.user_index()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_user_rows", None)
        return state

    def __setstate__(self, state: dict) -> None:
        # Models pickled before the pool moved into hparams carried the threshold and pool themselves.
        threshold, pool = state.pop("full_mlp_max_apps", None), state.pop("candidate_pool", None)
        if threshold is not None and "candidate_pool" not in state["hparams"]:
            n_apps = int(state["app_vectors"].shape[0])
            state["hparams"]["candidate_pool"] = 0 if n_apps <= threshold else int(pool)
        self.__dict__.update(state)
        self._user_rows = self.user_index()

    def _user_vectors(self, user_ids: Sequence[str], history: sp.csr_matrix) -> torch.Tensor:
        rows = np.array([self._user_rows.get(user, -1) for user in user_ids], dtype=np.int64)
        known = rows >= 0
        user_id = np.zeros(len(rows), dtype=np.int64)
        segment = np.zeros(len(rows), dtype=np.int64)
        numeric = np.zeros((len(rows), self.features.user_numeric.shape[1]), dtype=np.float32)
        user_id[known] = self.features.user_id_index[rows[known]]
        segment[known] = self.features.user_segment[rows[known]]
        numeric[known] = self.features.user_numeric[rows[known]]
        bag = history_bags(sp.csr_matrix(history), np.arange(len(rows)))
        return self.net.user_vectors(
            torch.from_numpy(user_id), bag, torch.from_numpy(segment), torch.from_numpy(numeric)
        )

    def score(self, user_ids: Sequence[str], history: sp.csr_matrix) -> np.ndarray:
        with torch.no_grad():
            users = self._user_vectors(user_ids, history)
            pool = int(self.hparams.get("candidate_pool", 0))
            return catalogue_logits(self.net, users, self.app_vectors, pool).numpy().astype(np.float32)

    def drop_users(self, user_ids: Sequence[str]) -> int:
        drop = {user for user in user_ids if user in self._user_rows}
        if not drop:
            return 0
        rows = np.array(sorted(self._user_rows[user] for user in drop), dtype=np.int64)
        id_rows = self.features.user_id_index[rows]
        id_rows = id_rows[id_rows > 0]  # row 0 is the shared "unknown user" embedding: keep it
        with torch.no_grad():
            # Forget the users' id embeddings; the table keeps its shape so other indices stay valid.
            self.net.user_id_embedding.weight[torch.from_numpy(id_rows)] = 0.0
        keep = np.ones(len(self.user_ids), dtype=bool)
        keep[rows] = False
        features = self.features
        features.user_ids = features.user_ids[keep]
        features.user_id_index = features.user_id_index[keep]
        features.user_segment = features.user_segment[keep]
        features.user_numeric = features.user_numeric[keep]
        self.user_ids = features.user_ids
        self._user_rows = self.user_index()
        return len(rows)


# ------------------------------------------------------------------ fit
def _warm_start(net: TwoTowerNet, warm: TwoTowerRecommender, features: TowerFeatures) -> None:
    """Copy parameters of the previous model, mapping id-indexed rows through the vocabularies."""
    old = warm.net.state_dict()
    new = net.state_dict()
    row_maps = {
        "user_id_embedding.weight": shared_positions(warm.features.user_ids, features.user_ids),
        "app_id_embedding.weight": shared_positions(warm.features.app_ids, features.app_ids),
        "history_embedding.weight": shared_positions(warm.features.app_ids, features.app_ids),
        "segment_embedding.weight": shared_positions(
            np.array(warm.features.segments, dtype=object), np.array(features.segments, dtype=object)
        ),
        "category_embedding.weight": shared_positions(
            np.array(warm.features.categories, dtype=object), np.array(features.categories, dtype=object)
        ),
    }
    with torch.no_grad():
        for name, tensor in new.items():
            if name not in old:
                continue
            if name in row_maps:
                old_rows, new_rows = row_maps[name]
                if name == "user_id_embedding.weight":
                    old_rows = warm.features.user_id_index[old_rows]
                    new_rows = new_rows + 1
                elif name == "app_id_embedding.weight":
                    old_rows = warm.features.app_id_index[old_rows]
                    new_rows = new_rows + 1
                elif name in ("segment_embedding.weight", "category_embedding.weight"):
                    old_rows, new_rows = old_rows + 1, new_rows + 1
                    tensor[0] = old[name][0]
                tensor[torch.from_numpy(new_rows)] = old[name][torch.from_numpy(old_rows)]
            elif old[name].shape == tensor.shape:
                tensor.copy_(old[name])
    net.load_state_dict(new)


def fit_two_tower(
    data: InteractionData,
    config: Config,
    options: ModelOptions,
    warm_start: Recommender | None = None,
    workdir: str | None = None,
) -> FitResult:
    """Train the two-tower model (full), or fine-tune ``warm_start`` on the newest days (incremental)."""
    training = config.training
    seed_everything(training.seed)
    incremental = isinstance(warm_start, TwoTowerRecommender)
    features = TowerFeatures.from_data(data)
    module = TwoTowerModule(
        **features.sizes(),
        embedding_dim=warm_start.hparams["embedding_dim"] if incremental else training.embedding_dim,
        hidden_dim=warm_start.hparams["hidden_dim"] if incremental else options.tt_hidden_dim,
        dropout=options.tt_dropout,
        learning_rate=training.learning_rate,
        weight_decay=options.tt_weight_decay,
        sampled_negatives=0 if data.n_apps <= options.tt_full_softmax_max_apps else options.tt_sampled_negatives,
        bce_weight=options.tt_bce_weight,
        pointwise_negatives=options.tt_pointwise_negatives,
        id_dropout=options.tt_id_dropout,
        lr_decay=options.tt_lr_decay,
        k=training.k,
        schedule="inverse_sqrt" if incremental else "constant",
        candidate_pool=0 if data.n_apps <= options.tt_full_mlp_max_apps else options.tt_retrieval_pool,
    )
    if incremental:
        _warm_start(module.net, warm_start, features)
    module.set_catalog(features.app_tensors())
    positives = data.fine_tune_matrix() if incremental else data.train
    datamodule = TwoTowerDataModule(
        data,
        features,
        positives,
        training.batch_size,
        training.seed,
        options.tt_history_dropout,
        options.epoch_val_max_users,
        options.tt_max_epoch_examples,
    )
    datamodule.setup()
    run = fit_module(
        config, options, module, datamodule, "two_tower", incremental, workdir, threads=options.tt_train_threads,
        ema_decay=options.tt_ema_decay,
        ema_every=options.tt_ema_every,
        ema_warmup=options.tt_ema_warmup,
    )
    recommender = TwoTowerRecommender(module.net, features, dict(module.hparams))
    params = {
        **{name: value for name, value in module.hparams.items() if name not in features.sizes()},
        "batch_size": training.batch_size,
        "max_epochs": run.max_epochs,
        "history_dropout": options.tt_history_dropout,
        "best_epoch": run.best_epoch if run.best_epoch is not None else -1,
        "n_train_pairs": int(positives.nnz),
        "scoring": "two_stage" if module.hparams.candidate_pool else "full_mlp",
    }
    return FitResult(
        recommender=recommender,
        params=params,
        history=run.history,
        history_logged=run.logged_to_mlflow,
        checkpoint_path=run.checkpoint_path,
        mode="incremental" if incremental else "full",
    )
