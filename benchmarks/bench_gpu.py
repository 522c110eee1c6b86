"""GPU check (issues 4 and 9): two-tower training and scoring throughput, GPU against CPU.

One short prepared script for a machine with an accelerator. At the ``medium`` preset's
shapes (100,100 users, 10,000 apps, ~1.9M training positives: synthetic interactions with a
Zipf app popularity, so no lake is needed), it measures on each device:

1. **training**: the production :class:`models.two_tower.TwoTowerModule` and data module
   (sampled softmax and two-stage validation, as at medium), ``--steps`` optimizer steps in a
   Lightning ``Trainer`` (``accelerator="gpu"`` with ``precision="bf16-mixed"``; the CPU run
   uses 32-bit), samples/s over the steps after ``--warmup`` (a sample = one positive or
   explicit-negative example);
2. **scoring**: users/s of the two-tower's catalogue scoring (user tower + two-stage logits +
   top-100) and of a bare ``U @ V.T`` + ``topk`` over the same shapes, in blocks of
   ``--block`` users.

Both devices run the same number of steps and users, in one process, so the ratios are
like for like. Without CUDA only the CPU figures are written (and the script says so).
Writes ``results/gpu.json``.

Usage::

    python benchmarks/bench_gpu.py [--steps 200] [--warmup 20] [--score-users 20000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

USERS, APPS, POSITIVES_PER_USER = 100_100, 10_000, 19


def medium_shaped_data(seed: int = 0, users: int = USERS, apps: int = APPS) -> Any:
    """Synthetic :class:`InteractionData` with the medium preset's sizes (no lake needed)."""
    from models.data import InteractionData

    rng = np.random.default_rng(seed)
    n_pairs = users * POSITIVES_PER_USER
    rows = rng.integers(0, users, n_pairs)
    columns = (rng.zipf(1.3, n_pairs) - 1) % apps
    train = sp.csr_matrix((np.ones(n_pairs, np.float32), (rows, columns)), shape=(users, apps))
    train.data[:] = 1.0
    n_negative = n_pairs // 2
    negatives = sp.csr_matrix(
        (np.ones(n_negative, np.float32), (rng.integers(0, users, n_negative), rng.integers(0, apps, n_negative))),
        shape=(users, apps),
    )
    validation = sp.csr_matrix(
        (np.ones(users, np.float32), (np.arange(users), rng.integers(0, apps, users))), shape=(users, apps)
    )
    app_features = pd.DataFrame(
        {
            "category": rng.choice([f"c{i}" for i in range(30)], apps),
            "price": rng.exponential(1.0, apps),
            "rating": rng.uniform(1, 5, apps),
        }
    )
    user_features = pd.DataFrame({"sessions_30d": rng.poisson(5, users), "recency_days": rng.integers(0, 90, users)})
    return InteractionData(
        np.array([f"u{i}" for i in range(users)], dtype=object),
        np.array([f"a{i}" for i in range(apps)], dtype=object),
        train.tocsr(),
        validation,
        negatives,
        app_features,
        user_features.astype(np.float64),
    )


def train_throughput(data: Any, device: str, steps: int, warmup: int, batch_size: int) -> dict[str, Any]:
    """Samples/s of ``steps`` two-tower training steps on ``device`` ("cpu" or "gpu")."""
    import pytorch_lightning as pl
    import torch

    from models.two_tower import TowerFeatures, TwoTowerDataModule, TwoTowerModule
    from personalization.config import Config

    options = Config().models
    pl.seed_everything(42, verbose=False)
    features = TowerFeatures.from_data(data)
    module = TwoTowerModule(
        **features.sizes(),
        sampled_negatives=options.tt_sampled_negatives,
        candidate_pool=options.tt_retrieval_pool,
        hidden_dim=options.tt_hidden_dim,
    )
    module.set_catalog(features.app_tensors())
    datamodule = TwoTowerDataModule(data, features, data.train, batch_size, 42, options.tt_history_dropout)
    datamodule.setup()

    class StepClock(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.samples: list[int] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            if device == "gpu":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())
            self.samples.append(int(batch["label"].numel()))

    clock = StepClock()
    trainer = pl.Trainer(
        accelerator=device,
        devices=1,
        precision="bf16-mixed" if device == "gpu" else "32-true",
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    trainer.fit(module, datamodule=datamodule)
    # Steps warmup.. (0-based) ran between the end of step warmup-1 and the end of the last one.
    seconds = clock.times[-1] - clock.times[warmup - 1] if len(clock.times) > warmup else float("nan")
    samples = sum(clock.samples[warmup:])
    return {
        "device": device,
        "precision": trainer.precision,
        "steps": len(clock.times),
        "timed_steps": max(len(clock.times) - warmup, 0),
        "batch_positives": batch_size,
        "seconds": round(seconds, 3),
        "samples_per_second": round(samples / seconds, 1) if seconds > 0 else None,
        "ms_per_step": round(1000 * seconds / max(len(clock.times) - warmup, 1), 2),
    }


def score_throughput(data: Any, device: str, users: int, block: int, dim: int = 64) -> dict[str, Any]:
    """Users/s of two-tower catalogue scoring and of a bare matmul + top-k on ``device``."""
    import torch

    from models.two_tower import TowerFeatures, TwoTowerNet, catalogue_logits, history_bags

    torch_device = torch.device("cuda" if device == "gpu" else "cpu")
    torch.manual_seed(0)
    features = TowerFeatures.from_data(data)
    net = TwoTowerNet(**features.sizes(), embedding_dim=dim).to(torch_device).eval()
    apps = {name: tensor.to(torch_device) for name, tensor in features.app_tensors().items()}
    history = data.train.tocsr()
    top = min(100, data.n_apps)
    results: dict[str, Any] = {"device": device, "users": users, "block": block}
    with torch.no_grad():
        app_vectors = net.app_vectors(apps["app_id"], apps["category"], apps["numeric"], apps["text"])
        # Bags are built on the CPU from the CSR history, as in production; only the nets move.
        bags = []
        for start in range(0, users, block):
            rows = np.arange(start, min(start + block, users))
            bag = tuple(part.to(torch_device) for part in history_bags(history, rows))
            inputs = (
                torch.from_numpy(features.user_id_index[rows]).to(torch_device),
                torch.from_numpy(features.user_segment[rows]).to(torch_device),
                torch.from_numpy(features.user_numeric[rows]).to(torch_device),
            )
            bags.append((bag, inputs))

        def sync() -> None:
            if device == "gpu":
                torch.cuda.synchronize()

        def two_tower() -> None:
            for bag, (user_id, segment, numeric) in bags:
                vectors = net.user_vectors(user_id, bag, segment, numeric)
                scores = catalogue_logits(net, vectors, app_vectors, top)
                torch.topk(scores, top, dim=1)

        user_matrix = torch.randn(users, dim, device=torch_device)

        def bare() -> None:
            for start in range(0, users, block):
                torch.topk(user_matrix[start : start + block] @ app_vectors.T, top, dim=1)

        for name, run in (("two_tower_scoring", two_tower), ("bare_matmul_topk", bare)):
            run()  # warm-up (kernels, allocator)
            sync()
            started = time.perf_counter()
            run()
            sync()
            seconds = time.perf_counter() - started
            results[name] = {"seconds": round(seconds, 3), "users_per_second": round(users / seconds, 1)}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps per device")
    parser.add_argument("--warmup", type=int, default=20, help="first steps left out of the timing")
    parser.add_argument("--batch-size", type=int, default=1024, help="positives per batch (training.batch_size)")
    parser.add_argument("--score-users", type=int, default=20_000, help="users scored per device")
    parser.add_argument("--block", type=int, default=2048, help="users per scoring block")
    parser.add_argument("--users", type=int, default=USERS)
    parser.add_argument("--apps", type=int, default=APPS)
    parser.add_argument("--cpu", action=argparse.BooleanOptionalAction, default=True, help="also run on the CPU")
    parser.add_argument("--output", default=str(ROOT / "results" / "gpu.json"))
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")

    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    has_gpu = torch.cuda.is_available()
    devices = (["gpu"] if has_gpu else []) + (["cpu"] if args.cpu or not has_gpu else [])
    if not has_gpu:
        print("no CUDA device: measuring the CPU only (run this on a GPU machine for the comparison)", flush=True)
    data = medium_shaped_data(users=args.users, apps=args.apps)
    report: dict[str, Any] = {
        "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "cuda_device": torch.cuda.get_device_name(0) if has_gpu else None,
        },
        "shapes": {"users": data.n_users, "apps": data.n_apps, "train_positives": int(data.train.nnz)},
        "training": {},
        "scoring": {},
    }
    for device in devices:
        print(f"== {device}: training {args.steps} steps", flush=True)
        report["training"][device] = train_throughput(data, device, args.steps, args.warmup, args.batch_size)
        print(f"   {report['training'][device]}", flush=True)
        print(f"== {device}: scoring {args.score_users} users", flush=True)
        report["scoring"][device] = score_throughput(data, device, min(args.score_users, data.n_users), args.block)
        print(f"   {report['scoring'][device]}", flush=True)
    if "gpu" in report["training"] and "cpu" in report["training"]:
        gpu, cpu = report["training"]["gpu"], report["training"]["cpu"]
        report["ratios"] = {
            "training_gpu_over_cpu": round(gpu["samples_per_second"] / cpu["samples_per_second"], 2),
            "two_tower_scoring_gpu_over_cpu": round(
                report["scoring"]["gpu"]["two_tower_scoring"]["users_per_second"]
                / report["scoring"]["cpu"]["two_tower_scoring"]["users_per_second"],
                2,
            ),
            "bare_scoring_gpu_over_cpu": round(
                report["scoring"]["gpu"]["bare_matmul_topk"]["users_per_second"]
                / report["scoring"]["cpu"]["bare_matmul_topk"]["users_per_second"],
                2,
            ),
        }
        print(f"ratios: {report['ratios']}", flush=True)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    print(f"wrote {output}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
