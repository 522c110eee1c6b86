"""Two-tower model: bags, the decomposed pair MLP, training loop, scoring modes, warm start."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader

from models.common import ModelOptions
from models.data import from_frames, toy_frames
from models.evaluation import evaluate
from models.lit import LazyAdamW
from models.two_tower import (
    FastDropout,
    TowerFeatures,
    TwoTowerDataModule,
    TwoTowerModule,
    TwoTowerNet,
    TwoTowerRecommender,
    _Positions,
    _warm_start,
    fit_two_tower,
    history_bags,
)
from personalization.config import Config, load_config


@pytest.fixture(scope="module")
def toy():
    frames = toy_frames()
    # One app released today: features but no interaction (cold start).
    cold = frames["app_features"].iloc[[0]].assign(app_id="a99", pop_7d=0.0, pop_30d=0.0)
    frames["app_features"] = pd.concat([frames["app_features"], cold], ignore_index=True)
    return from_frames(**frames, date="2026-10-04")


@pytest.fixture(scope="module")
def trained(toy, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two_tower")
    config = _config(tmp, max_epochs=3)
    return fit_two_tower(toy, config, ModelOptions(tt_hidden_dim=16, tt_sampled_negatives=8), workdir=str(tmp))


def _config(tmp_path, **training) -> Config:
    return load_config(
        environ={},
        overrides={"paths": {"root": str(tmp_path)}, "training": {"embedding_dim": 8, "batch_size": 64, **training}},
    )


def test_history_bags_exclude_target_and_weight_by_size() -> None:
    history = sp.csr_matrix(np.array([[1, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=np.float32))
    indices, offsets, weights = history_bags(history, np.array([0, 1, 2, 0]), exclude=np.array([1, -1, -1, 3]))
    assert indices.tolist() == [0, 2, 1, 0, 1, 2]
    assert offsets.tolist() == [0, 2, 3, 3]
    assert weights.tolist() == pytest.approx([2**-0.5, 2**-0.5, 1.0, 3**-0.5, 3**-0.5, 3**-0.5])


def test_pair_logits_equal_aligned_logits() -> None:
    torch.manual_seed(0)
    net = TwoTowerNet(3, 5, 0, 0, 0, 0, 0, embedding_dim=4, hidden_dim=6).eval()
    users, apps = torch.randn(3, 4), torch.randn(5, 4)
    full = net.pair_logits(users, apps)
    aligned = net.logits(users.repeat_interleave(5, dim=0), apps.repeat(3, 1)).reshape(3, 5)
    torch.testing.assert_close(full, aligned)


def test_tower_features_index_zero_is_unknown(toy) -> None:
    features = TowerFeatures.from_data(toy)
    assert features.sizes() == {
        "n_users": 40,
        "n_apps": 17,
        "n_segments": 2,
        "n_categories": 2,
        "n_user_numeric": 2,
        "n_app_numeric": 6,
        "text_dim": 4,
    }
    assert features.app_id_index[-1] == 0  # a99 never interacted: unknown id
    assert features.app_id_index[:3].tolist() == [1, 2, 3]
    assert features.user_segment[[0, 39]].tolist() == [1, 2]  # gamers, workers
    # Standardised numeric columns (constant age rating -> zeros).
    assert np.allclose(features.app_numeric[:, :5].mean(axis=0), 0.0, atol=1e-6)
    assert np.allclose(features.app_numeric[:, 5], 0.0)


def test_fast_dev_run(toy, tmp_path) -> None:
    fit = fit_two_tower(
        toy,
        _config(tmp_path),
        ModelOptions(fast_dev_run=True, tt_hidden_dim=16, tt_sampled_negatives=8),
        workdir=str(tmp_path),
    )
    assert [sorted(row) for row in fit.history] == [
        ["epoch", "train/bce_loss", "train/loss", "train/softmax_loss", "val/ndcg@10"]
    ]
    assert fit.params["scoring"] == "full_mlp"


def test_large_catalogue_path_samples_negatives_and_scores_in_two_stages(toy, tmp_path) -> None:
    # Thresholds below the toy's 17 apps: sampled softmax, two-stage validation and scoring.
    options = ModelOptions(
        tt_hidden_dim=16, tt_sampled_negatives=6, tt_full_softmax_max_apps=10, tt_full_mlp_max_apps=10,
        tt_retrieval_pool=4,
    )
    config = _config(tmp_path, max_epochs=2)
    fit = fit_two_tower(toy, config, options, workdir=str(tmp_path))
    assert fit.params["sampled_negatives"] == 6 and fit.params["candidate_pool"] == 4
    assert fit.params["scoring"] == "two_stage"
    assert len(fit.history) == 2 and all(np.isfinite(row["val/ndcg@10"]) for row in fit.history)
    scores = fit.recommender.score(["u00"], toy.train[[0]])
    assert scores.shape == (1, 17) and np.isfinite(scores).all()


def test_trained_model_scores_every_app_and_learns(toy, trained) -> None:
    model = trained.recommender
    scores = model.score(
        ["u00", "u39", "stranger", "empty"], sp.vstack([toy.train[[0, 39, 0]], sp.csr_matrix((1, 17))])
    )
    assert scores.shape == (4, 17) and np.isfinite(scores).all()
    # The stranger has u00's history: history alone gives a personal ranking, unlike an empty history.
    assert not np.allclose(scores[2], scores[3])
    # The cold app (no interactions, id 0) is scored from its features.
    assert np.isfinite(scores[:, -1]).all()
    ndcg = evaluate(model, toy, 10)["ndcg@10"]
    assert max(row["val/ndcg@10"] for row in trained.history) == pytest.approx(ndcg, abs=1e-6)


def test_reloads_give_identical_scores(toy, trained) -> None:
    users, history = toy.user_ids[:6].tolist(), toy.train[:6]
    expected = trained.recommender.score(users, history)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(trained.recommender)).score(users, history), expected)
    module = TwoTowerModule.load_from_checkpoint(trained.checkpoint_path, map_location="cpu")
    reloaded = TwoTowerRecommender(module.net, TowerFeatures.from_data(toy), dict(module.hparams))
    np.testing.assert_array_equal(reloaded.score(users, history), expected)


def test_models_pickled_with_the_old_pool_attributes_still_score(toy, trained) -> None:
    users, history = toy.user_ids[:3].tolist(), toy.train[:3]
    state = pickle.loads(pickle.dumps(trained.recommender)).__getstate__()
    state["hparams"].pop("candidate_pool")
    # Before the pool moved into hparams the recommender held the threshold and the pool itself.
    for threshold, pool, expected_pool in ((20000, 100, 0), (10, 4, 4)):
        old = TwoTowerRecommender.__new__(TwoTowerRecommender)
        old.__setstate__({**state, "hparams": dict(state["hparams"]), "full_mlp_max_apps": threshold,
                          "candidate_pool": pool})
        assert old.hparams["candidate_pool"] == expected_pool and not hasattr(old, "full_mlp_max_apps")
        fresh = pickle.loads(pickle.dumps(trained.recommender))
        fresh.hparams["candidate_pool"] = expected_pool
        np.testing.assert_array_equal(old.score(users, history), fresh.score(users, history))


def test_two_stage_scoring_reranks_retrieved_candidates(toy, trained) -> None:
    model = pickle.loads(pickle.dumps(trained.recommender))
    users, history = ["u00", "u25"], toy.train[[0, 25]]
    model.hparams["candidate_pool"] = 4
    scores = torch.from_numpy(model.score(users, history))
    with torch.no_grad():
        vectors = model._user_vectors(users, history)
        dots = vectors @ model.app_vectors.T
        full = model.net.pair_logits(vectors, model.app_vectors)
    for row in range(2):
        candidates = torch.topk(dots[row], 4).indices
        others = torch.ones(17, dtype=torch.bool)
        others[candidates] = False
        torch.testing.assert_close(scores[row, candidates], full[row, candidates])
        assert scores[row, others].max() < scores[row, candidates].min()
        # Below the candidates, apps keep their dot-product order.
        order_by_score = torch.argsort(scores[row, others], descending=True, stable=True)
        order_by_dot = torch.argsort(dots[row, others], descending=True, stable=True)
        assert order_by_score.tolist() == order_by_dot.tolist()


def test_warm_start_copies_shared_rows(toy, trained) -> None:
    frames = toy_frames()
    extra = pd.DataFrame(
        {
            "user_id": ["zz-new"],
            "app_id": ["a01"],
            "weight": [1.0],
            "label": [1],
            "split": ["train"],
            "event_ts": [pd.Timestamp("2026-10-03", tz="UTC")],
        }
    )
    frames["interactions"] = pd.concat([frames["interactions"], extra], ignore_index=True)
    data = from_frames(**frames)
    features = TowerFeatures.from_data(data)
    net = TwoTowerNet(**features.sizes(), embedding_dim=8, hidden_dim=16)
    _warm_start(net, trained.recommender, features)
    old = trained.recommender.net
    # u05 keeps its row (index 6 = row 5 + 1) in both vocabularies; a03 likewise.
    torch.testing.assert_close(net.user_id_embedding.weight[6], old.user_id_embedding.weight[6])
    torch.testing.assert_close(net.app_id_embedding.weight[4], old.app_id_embedding.weight[4])
    torch.testing.assert_close(net.user_tower[0].weight, old.user_tower[0].weight)
    new_row = features.user_id_index[list(data.user_ids).index("zz-new")]
    assert not torch.equal(net.user_id_embedding.weight[new_row], old.user_id_embedding.weight[0])


def test_drop_users_forgets_their_rows(trained, toy) -> None:
    model = pickle.loads(pickle.dumps(trained.recommender))
    index = model.features.user_id_index[0]
    assert model.drop_users(["u00", "nobody"]) == 1
    assert "u00" not in model.user_ids.tolist() and len(model.user_ids) == 39
    assert model.net.user_id_embedding.weight[index].abs().sum().item() == 0.0
    assert np.isfinite(model.score(["u00"], toy.train[:1])).all()


def test_optimiser_schedules() -> None:
    constant = TwoTowerModule(3, 4, learning_rate=0.01).configure_optimizers()
    assert isinstance(constant, LazyAdamW) and constant.param_groups[0]["lr"] == 0.01
    assert constant.param_groups[0]["weight_decay"] == 1e-5
    decayed = TwoTowerModule(3, 4, learning_rate=0.01, lr_decay=0.5).configure_optimizers()
    scheduler = decayed["lr_scheduler"]
    assert scheduler["interval"] == "epoch" and scheduler["scheduler"].gamma == 0.5
    incremental = TwoTowerModule(3, 4, schedule="inverse_sqrt", lr_decay=0.5).configure_optimizers()
    assert incremental["lr_scheduler"]["interval"] == "step"  # fine-tuning uses base / sqrt(1 + iteration)


def test_epoch_example_cap_draws_a_fresh_subset_each_epoch(toy) -> None:
    features = TowerFeatures.from_data(toy)

    def loader(cap: int):
        datamodule = TwoTowerDataModule(toy, features, toy.train, 4, 7, 0.0, max_epoch_examples=cap)
        datamodule.setup()
        return datamodule.train_dataloader()

    n_positives = toy.train.nnz
    # Uncapped (or a cap above the data): exactly the batches of a shuffle=True loader.
    shuffled = DataLoader(_Positions(n_positives), batch_size=4, shuffle=True,
                          generator=torch.Generator().manual_seed(7), collate_fn=list)
    expected = list(shuffled)
    for cap in (0, n_positives + 5):
        uncapped = loader(cap)
        uncapped.collate_fn = list
        assert list(uncapped) == expected
    capped = loader(10)
    capped.collate_fn = list
    first = [position for batch in capped for position in batch]
    second = [position for batch in capped for position in batch]
    assert len(first) == len(set(first)) == 10 and len(second) == len(set(second)) == 10
    assert first != second and max(first + second) < n_positives


def test_fast_dropout_is_inverted_dropout_seeded_by_torch() -> None:
    layer = FastDropout(0.25)
    inputs = torch.full((400, 50), 2.0, requires_grad=True)
    torch.manual_seed(5)
    out = layer(inputs)
    assert set(torch.unique(out).tolist()) == {0.0, torch.tensor(2.0 / 0.75).item()}
    assert abs(float((out == 0).float().mean()) - 0.25) < 0.01  # 20,000 draws
    out.sum().backward()
    torch.testing.assert_close(inputs.grad, (out != 0).float() / 0.75)  # gradient through the mask
    torch.manual_seed(5)
    assert torch.equal(layer(inputs), out)  # torch's seed fixes the mask
    assert not torch.equal(layer(inputs), out)
    layer.eval()
    assert layer(inputs) is inputs
    assert FastDropout(0.0).train()(inputs) is inputs
    with pytest.raises(ValueError, match="dropout probability"):
        FastDropout(1.0)


def test_weight_average_option_keeps_the_average_it_validated(toy, tmp_path) -> None:
    options = ModelOptions(tt_hidden_dim=16, tt_sampled_negatives=8, tt_ema_decay=0.9, tt_ema_warmup=False)
    fit = fit_two_tower(toy, _config(tmp_path, max_epochs=3), options, workdir=str(tmp_path))
    plain = fit_two_tower(toy, _config(tmp_path / "plain", max_epochs=3), ModelOptions(tt_hidden_dim=16,
                          tt_sampled_negatives=8), workdir=str(tmp_path / "plain"))
    # The kept weights are the averaged snapshot of the best epoch: evaluating them gives that epoch's NDCG.
    ndcg = evaluate(fit.recommender, toy, 10)["ndcg@10"]
    assert max(row["val/ndcg@10"] for row in fit.history) == pytest.approx(ndcg, abs=1e-6)
    users, history = toy.user_ids[:4].tolist(), toy.train[:4]
    assert not np.allclose(fit.recommender.score(users, history), plain.recommender.score(users, history))
    module = TwoTowerModule.load_from_checkpoint(fit.checkpoint_path, map_location="cpu")
    reloaded = TwoTowerRecommender(module.net, TowerFeatures.from_data(toy), dict(module.hparams))
    np.testing.assert_array_equal(reloaded.score(users, history), fit.recommender.score(users, history))
