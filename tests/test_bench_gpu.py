"""The prepared GPU check (benchmarks/bench_gpu.py) runs end to end; on a CPU-only machine it measures the CPU."""

from __future__ import annotations

import json

import torch

from benchmarks.bench_gpu import main, medium_shaped_data


def test_medium_shaped_data_has_the_requested_sizes() -> None:
    data = medium_shaped_data(users=50, apps=20)
    assert (data.n_users, data.n_apps) == (50, 20)
    assert data.train.shape == data.negatives.shape == data.validation.shape == (50, 20)
    assert set(data.train.data.tolist()) == {1.0} and data.train.nnz > 0
    assert data.validation.getnnz(axis=1).tolist() == [1] * 50


def test_gpu_check_writes_training_and_scoring_throughput(tmp_path) -> None:
    out = tmp_path / "gpu.json"
    assert main(["--users", "300", "--apps", "60", "--steps", "4", "--warmup", "1", "--batch-size", "64",
                 "--score-users", "200", "--block", "64", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    devices = {"gpu", "cpu"} if torch.cuda.is_available() else {"cpu"}
    assert set(report["training"]) == set(report["scoring"]) == devices
    cpu = report["training"]["cpu"]
    assert cpu["steps"] == 4 and cpu["timed_steps"] == 3 and cpu["samples_per_second"] > 0
    scoring = report["scoring"]["cpu"]
    assert scoring["users"] == 200
    assert scoring["two_tower_scoring"]["users_per_second"] > 0 and scoring["bare_matmul_topk"]["users_per_second"] > 0
    assert ("ratios" in report) == ("gpu" in devices)
