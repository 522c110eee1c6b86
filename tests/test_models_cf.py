"""BPR collaborative filtering: Lightning loop, checkpoints, fold-in scoring, warm starts."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from models.cf import BPRDataModule, BPRModule, BPRRecommender, _warm_start, fit_cf_bpr
from models.common import ModelOptions
from models.data import from_frames, toy_frames
from models.evaluation import evaluate
from models.lit import EvaluationRows, inverse_sqrt_schedule
from personalization.config import Config, load_config


@pytest.fixture(scope="module")
def toy():
    return from_frames(**toy_frames(), date="2026-10-04")


def _config(tmp_path, **training) -> Config:
    return load_config(
        environ={},
        overrides={"paths": {"root": str(tmp_path)}, "training": {"embedding_dim": 8, "batch_size": 64, **training}},
    )


def test_fast_dev_run_trains_one_batch(toy, tmp_path) -> None:
    fit = fit_cf_bpr(toy, _config(tmp_path), ModelOptions(fast_dev_run=True), workdir=str(tmp_path))
    assert fit.mode == "full"
    assert [sorted(row) for row in fit.history] == [["epoch", "train/loss", "val/ndcg@10"]]
    assert fit.recommender.user_factors.shape == (40, 8)
    scores = fit.recommender.score(["u00", "stranger"], toy.train[:2])
    assert scores.shape == (2, 16) and np.isfinite(scores).all()


def test_checkpoint_and_pickle_reload_give_identical_scores(toy, tmp_path) -> None:
    fit = fit_cf_bpr(toy, _config(tmp_path, max_epochs=2), ModelOptions(), workdir=str(tmp_path))
    users = toy.user_ids[:5].tolist()
    expected = fit.recommender.score(users, toy.train[:5])
    reloaded = BPRModule.load_from_checkpoint(fit.checkpoint_path, map_location="cpu")
    from_checkpoint = BPRRecommender.from_module(reloaded, toy)
    np.testing.assert_array_equal(from_checkpoint.score(users, toy.train[:5]), expected)
    unpickled = pickle.loads(pickle.dumps(fit.recommender))
    np.testing.assert_array_equal(unpickled.score(users, toy.train[:5]), expected)
    assert fit.params["best_epoch"] in (0, 1)


def test_bpr_learns_the_two_tastes(toy, tmp_path) -> None:
    config = _config(tmp_path, max_epochs=15, learning_rate=0.05)
    fit = fit_cf_bpr(toy, config, ModelOptions(early_stopping_patience=0), workdir=str(tmp_path))
    ndcg = evaluate(fit.recommender, toy, 10)["ndcg@10"]
    # Ranking at random among the 16 apps gives about 0.3 here; the tastes are learnable.
    assert ndcg > 0.6
    assert max(row["val/ndcg@10"] for row in fit.history) == pytest.approx(ndcg, abs=1e-6)


def test_scoring_known_folded_in_and_cold_users() -> None:
    model = BPRRecommender(
        user_ids=np.array(["u1"], dtype=object),
        app_ids=np.array(["a", "b", "c"], dtype=object),
        user_factors=np.array([[1.0, 0.0]]),
        app_factors=np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]),
        app_bias=np.array([0.0, 0.5, 0.0]),
        fallback=np.array([0.3, 0.2, 0.1]),
        hparams={},
    )
    history = sp.csr_matrix(np.array([[0, 0, 0], [0, 2, 0], [0, 0, 0]], dtype=np.float32))
    scores = model.score(["u1", "new-with-history", "new-empty"], history)
    # u1: own factors; the new user folds in as the mean factor of b = (0, 1); the cold one gets popularity.
    np.testing.assert_allclose(scores, [[1.0, 0.5, 1.0], [0.0, 1.5, 1.0], [0.3, 0.2, 0.1]])
    assert model.drop_users(["u1", "unknown"]) == 1
    assert model.user_ids.tolist() == [] and model.user_factors.shape == (0, 2)
    np.testing.assert_allclose(model.score(["u1"], history[:1]), [[0.3, 0.2, 0.1]])


def test_warm_start_maps_rows_by_id(toy) -> None:
    old = BPRRecommender(
        user_ids=np.array(["u01", "gone"], dtype=object),
        app_ids=np.array(["a03", "zz"], dtype=object),
        user_factors=np.full((2, 8), 7.0),
        app_factors=np.full((2, 8), 5.0),
        app_bias=np.array([0.25, 9.0]),
        fallback=np.zeros(2),
        hparams={},
    )
    module = BPRModule(toy.n_users, toy.n_apps, embedding_dim=8)
    _warm_start(module, old, toy)
    net = module.net
    assert net.user_embedding.weight[1].tolist() == [7.0] * 8  # u01 is row 1 of the new vocabulary
    assert net.user_embedding.weight[0].abs().max().item() < 1.0  # u00 is new: fresh init
    assert net.app_embedding.weight[3].tolist() == [5.0] * 8 and net.app_bias.weight[3, 0].item() == 0.25


def test_incremental_fine_tune_uses_recent_data_and_decaying_rate(toy, tmp_path) -> None:
    config = _config(tmp_path, max_epochs=2)
    base = fit_cf_bpr(toy, config, ModelOptions(), workdir=str(tmp_path / "base"))
    tuned = fit_cf_bpr(
        toy, config, ModelOptions(incremental_epochs=1), warm_start=base.recommender, workdir=str(tmp_path / "tuned")
    )
    assert tuned.mode == "incremental"
    assert tuned.params["n_train_pairs"] == toy.recent.nnz == 40
    assert len(tuned.history) == 1
    assert not np.array_equal(tuned.recommender.app_factors, base.recommender.app_factors)


def test_inverse_sqrt_schedule() -> None:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    scheduler = inverse_sqrt_schedule(optimizer)["scheduler"]
    rates = []
    for _ in range(4):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.1, 0.1 / np.sqrt(2), 0.1 / np.sqrt(3), 0.1 / 2])


def test_epoch_losses_are_the_mean_of_the_step_losses(toy, tmp_path) -> None:
    """EpochMeansMixin logs each epoch's mean training loss once; CPU batches pass through untouched."""
    batch = (torch.tensor([0, 1]), torch.tensor([2, 3]))
    datamodule = BPRDataModule(toy, toy.train, batch_size=4, seed=0)
    assert datamodule.transfer_batch_to_device(batch, torch.device("cpu"), 0) is batch
    module = BPRModule(n_users=3, n_apps=4, embedding_dim=2)
    module.train_loss.update(torch.tensor(1.0))
    module.train_loss.update(torch.tensor(2.0))
    logged = {}
    module.log = lambda key, value: logged.update({key: float(value)})  # no Trainer attached
    module.on_train_epoch_end()
    assert logged == {"train/loss": 1.5}
    assert module.train_loss.update_count == 0  # reset for the next epoch
    fit = fit_cf_bpr(toy, _config(tmp_path, max_epochs=3), ModelOptions(early_stopping_patience=0),
                     workdir=str(tmp_path))
    assert [row["epoch"] for row in fit.history] == [0.0, 1.0, 2.0]
    losses = [row["train/loss"] for row in fit.history]
    assert len(set(losses)) == 3 and all(np.isfinite(losses))


def test_epoch_validation_users_are_a_seeded_sample_when_capped(toy) -> None:
    everyone = EvaluationRows(toy)
    assert len(everyone) > 5
    sample = EvaluationRows(toy, max_users=5, seed=3)
    again = EvaluationRows(toy, max_users=5, seed=3)
    assert len(sample) == 5 and sample.rows.tolist() == again.rows.tolist()
    assert sample.rows.tolist() == sorted(sample.rows.tolist())
    # Each sampled user keeps exactly the relevant apps it has among all validation users.
    position_of = {row: position for position, row in enumerate(everyone.rows.tolist())}
    for position, row in enumerate(sample.rows.tolist()):
        want = everyone.relevant[position_of[row]].indices.tolist()
        assert sample.relevant[position].indices.tolist() == want
    assert len(EvaluationRows(toy, max_users=10_000)) == len(everyone)
    datamodule = BPRDataModule(toy, toy.train, batch_size=4, seed=3, val_max_users=5)
    datamodule.setup()
    assert datamodule.validation.rows.tolist() == sample.rows.tolist()


def test_epochs_go_to_the_active_mlflow_run_by_epoch_and_leave_it_open(toy, tmp_path) -> None:
    """Lightning's MLFlowLogger (EpochMetricsLogger) logs into the run already open; outside a run, nothing."""
    import mlflow
    from mlflow.tracking import MlflowClient

    config = _config(tmp_path, max_epochs=3)
    options = ModelOptions(early_stopping_patience=0)
    outside = fit_cf_bpr(toy, config, options, workdir=str(tmp_path / "outside"))
    assert outside.history_logged is False and len(outside.history) == 3
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        # An experiment of this store: an earlier test's mlflow.set_experiment (process-wide) names one of
        # another store, which start_run() would otherwise look for here.
        experiment_id = MlflowClient().create_experiment("cf-epoch-logging")
        with mlflow.start_run(experiment_id=experiment_id) as run:
            fit = fit_cf_bpr(toy, config, options, workdir=str(tmp_path / "inside"))
            client = MlflowClient()
            assert client.get_run(run.info.run_id).info.status == "RUNNING"  # the logger did not end it
        assert fit.history_logged is True
        assert fit.history == outside.history  # same seed, same epochs: logging changes nothing
        logged = client.get_metric_history(run.info.run_id, "val/ndcg_at_10")
        assert [(point.step, point.value) for point in logged] == [
            (int(row["epoch"]), pytest.approx(row["val/ndcg@10"])) for row in fit.history
        ]
        names = set(client.get_run(run.info.run_id).data.metrics)
        assert names == {"train/loss", "val/ndcg_at_10"}  # no "epoch" metric, no renamed duplicates
        # The checkpoint is the best epoch's, and best_epoch names it.
        best = max(range(3), key=lambda epoch: fit.history[epoch]["val/ndcg@10"])
        assert fit.params["best_epoch"] == best
        assert torch.load(fit.checkpoint_path, weights_only=False)["epoch"] == best
    finally:
        mlflow.set_tracking_uri(previous)
