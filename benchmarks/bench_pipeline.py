"""Whole-pipeline scale benchmark: the nightly stages per scale, growth exponents, component ratios.

For each scale in ``--scales`` (default ``tiny small``; ``small2x`` is ``small`` with twice
the users; ``medium`` is the real target) in its own project root ``<work-dir>/<scale>``:

1. generate the synthetic world (skipped when that root already holds it);
2. setup: validate every earlier landing date, so silver has its history (timed apart);
3. the nightly stages for the last date, each in a fresh child process (as an Airflow
   task runs it, local Spark ``--master`` with a ``--driver-memory`` driver): wall
   seconds, stage seconds, peak RSS of the child and its JVM, input rows and rows/s;
4. component ratios in the same run: Lightning training against a plain PyTorch loop
   over the same BPR module and batches; Great Expectations time as a share of
   ingestion (timed inside the validation child); scoring against the bare
   matrix-product-plus-top-k limit and Spark ALS (``benchmarks/bench_scoring.py`` at the
   world's users x apps).

Then, over every scale measured so far (``results/pipeline_<scale>.json``), fits the growth
exponent ``b`` of ``seconds ~ size ** b`` per stage (size: events for the data stages,
users for scoring and serving, interactions for training), flags ``b > 1.2``, and
extrapolates each stage to 10M and 100M users. Writes ``results/pipeline_<scale>.json``,
``results/pipeline.json`` and ``results/pipeline.md``.

Usage::

    python benchmarks/bench_pipeline.py [--scales tiny small] [--work-dir results/bench_work/pipeline]
        [--profile] [--spark-event-log] [--skip-components]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import growth_exponent, growth_ratio, print_report, run_child  # noqa: E402
from personalization.pipeline import SPARK_STAGES, STAGES  # noqa: E402

#: The nightly DAG's work in order (the DAG's check_params only checks parameters). STAGES
#: includes the late-arrival recompute; each stage runs once.
NIGHTLY = STAGES
assert len(set(NIGHTLY)) == len(NIGHTLY)
#: What each stage's cost is fitted against.
SIZE_OF = {
    "generate": "events",
    "setup": "events",
    "validate_raw_events": "landing_lines",
    "recompute_late_partitions": "events",
    "build_profiles": "events",
    "build_segments": "users",
    "build_features": "events",
    "train_models": "interactions",
    "evaluate_and_promote": "interactions",
    "score_users": "users",
    "publish_serving": "users",
    "validate_serving": "users",
}
#: Scale label -> (generator preset, users multiplier).
VARIANTS = {"tiny": ("tiny", 1), "small": ("small", 1), "small2x": ("small", 2), "medium": ("medium", 1),
            "large": ("large", 1)}
FLAG_EXPONENT = 1.2
TARGET_USERS = (10_000_000, 100_000_000)
#: Nightly window and how it is split between the stage groups when sizing a cluster (seconds).
WINDOW_SECONDS = 2 * 3600
SLOTS = {"data": 3600, "training": 1800, "scoring": 1200, "serving": 600}
#: Share of perfect scaling a cluster reaches (shuffles, stragglers, start-up).
PARALLEL_EFFICIENCY = 0.6


def _group(stage: str) -> str:
    if stage in SPARK_STAGES:
        return "data"
    if stage in ("train_models", "evaluate_and_promote"):
        return "training"
    return "scoring" if stage == "score_users" else "serving"


# ====================================================================== children
def _load(config_path: str):
    from personalization.config import load_config

    return load_config(config_path)


def child_generate(args: argparse.Namespace) -> dict[str, Any]:
    """Generate the world; ``small2x`` multiplies the preset's users (same apps and days)."""
    import dataclasses

    from personalization.generator import SCALE_PRESETS, generate_world

    config = _load(args.config)
    preset_name, factor = VARIANTS[args.scale_label]
    preset = SCALE_PRESETS[preset_name]
    if factor != 1:
        preset = dataclasses.replace(preset, n_users=preset.n_users * factor,
                                     new_users_per_day=preset.new_users_per_day * factor)
    started = time.perf_counter()
    summary = generate_world(config, progress=False, preset=preset)
    return {"seconds": time.perf_counter() - started, "n_users": summary.n_users, "n_apps": summary.n_apps,
            "n_events": summary.n_events, "n_lines": summary.n_lines}


def child_setup(args: argparse.Namespace) -> dict[str, Any]:
    """Validate every earlier landing date (one process, one JVM, like `pe run`)."""
    from personalization.pipeline import ingest_pending_landing_dates

    config = _load(args.config)
    started = time.perf_counter()
    ingest_pending_landing_dates(config, args.date, progress=True)
    return {"seconds": time.perf_counter() - started}


def _instrument_validation(timings: dict[str, float]) -> None:
    """Time the GX part of validate_raw_events (aggregates in Spark, then GX itself) from outside."""
    from jobs import validate_raw_events as job

    def timed(name: str, function):
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if name == "gx_expectations":
                started = time.perf_counter()
                import great_expectations  # noqa: F401 - its import is a measured part of GX's cost

                timings["gx_import"] = timings.get("gx_import", 0.0) + time.perf_counter() - started
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                timings[name] = timings.get(name, 0.0) + time.perf_counter() - started
        return wrapper

    job.batch_aggregates = timed("gx_aggregates", job.batch_aggregates)
    job.run_expectations = timed("gx_expectations", job.run_expectations)


def child_stage(args: argparse.Namespace) -> dict[str, Any]:
    """Run one pipeline stage in this process; optionally under cProfile."""
    from personalization import pipeline

    config = _load(args.config)
    timings: dict[str, float] = {}
    if args.stage == "validate_raw_events":
        _instrument_validation(timings)
    work = getattr(pipeline, args.stage)
    if args.profile_dir:
        result = _profiled(lambda: work(config, args.date), Path(args.profile_dir) / f"{args.stage}.txt")
    else:
        result = work(config, args.date)
    return {"seconds": result["seconds"], "timings": timings, "result": _small(result)}


def _profiled(work, out: Path):  # noqa: ANN001, ANN202 - any callable, its result
    """Run ``work`` under cProfile; write the 40 costliest functions (cumulative) to ``out``."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    result = profiler.runcall(work)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text.getvalue())
    return result


def _small(result: dict[str, Any]) -> dict[str, Any]:
    """The scalar and short entries of a stage record (large nested ones are summarised)."""
    kept: dict[str, Any] = {}
    for key, value in result.items():
        text = json.dumps(value, default=str)
        kept[key] = value if len(text) <= 400 else f"<{len(text)} chars>"
    return kept


def child_lightning(args: argparse.Namespace) -> dict[str, Any]:
    """BPR: the project's Lightning fit against a plain PyTorch loop, same module, batches, epochs.

    Both run the same epochs (early stopping off), validate every epoch with the same
    NDCG metric, keep the best epoch's weights and save them once at the end; only the
    loop around ``training_step``/``validation_step`` differs. One untimed plain epoch
    warms torch up first; then plain and Lightning alternate ``--repeats`` times and the
    fastest of each counts (the machine is shared, so the minimum is the least disturbed).
    """
    import copy
    import dataclasses
    import tempfile
    import warnings

    import torch

    from models.cf import BPRDataModule, BPRModule
    from models.common import model_options
    from models.data import load_training_data
    from models.lit import deterministic_torch, fit_module, seed_everything

    config = _load(args.config)
    training = config.training
    options = dataclasses.replace(model_options(config), early_stopping_patience=0)
    data = load_training_data(config, args.date)
    workdir = tempfile.mkdtemp(prefix="bench-lightning-")

    def build() -> tuple[BPRModule, BPRDataModule]:
        seed_everything(training.seed)
        module = BPRModule(n_users=data.n_users, n_apps=data.n_apps, embedding_dim=training.embedding_dim,
                           learning_rate=training.learning_rate, l2=options.cf_l2, k=training.k)
        datamodule = BPRDataModule(data, data.train, training.batch_size, training.seed)
        datamodule.setup()
        module.set_positive_keys(datamodule.positive_keys())
        return module, datamodule

    def lightning_fit() -> float | None:
        module, datamodule = build()
        run = fit_module(config, options, module, datamodule, "cf_bpr", incremental=False, workdir=workdir)
        return run.best_score

    def plain_fit(epochs: int) -> float | None:
        module, datamodule = build()
        optimizer = module.configure_optimizers()
        best_score, best_state = None, None
        for _ in range(epochs):
            module.train()
            for index, batch in enumerate(datamodule.train_dataloader()):
                optimizer.zero_grad(set_to_none=True)
                module.training_step(batch, index).backward()
                optimizer.step()
            module.train_loss.reset()
            module.eval()
            with torch.no_grad():
                for index, batch in enumerate(datamodule.val_dataloader()):
                    module.validation_step(batch, index)
            score = float(module.val_ndcg.compute())
            module.val_ndcg.reset()
            if best_score is None or score > best_score:
                best_score, best_state = score, copy.deepcopy(module.state_dict())
        if best_state is not None:
            module.load_state_dict(best_state)
        torch.save(module.state_dict(), Path(workdir) / "plain.pt")
        return best_score

    def plain() -> float | None:
        with warnings.catch_warnings(), deterministic_torch(options.train_threads):
            # training_step's self.log() warns that no Trainer is attached; that is the point here.
            warnings.simplefilter("ignore")
            return plain_fit(training.max_epochs)

    with warnings.catch_warnings(), deterministic_torch(options.train_threads):
        warnings.simplefilter("ignore")
        plain_fit(1)  # warm-up, untimed
    seconds: dict[str, list[float]] = {"plain": [], "lightning": []}
    best: dict[str, float | None] = {}
    for _ in range(args.repeats):
        for kind, fit in (("plain", plain), ("lightning", lightning_fit)):
            started = time.perf_counter()
            best[kind] = fit()
            seconds[kind].append(round(time.perf_counter() - started, 3))
    if args.profile_dir:
        _profiled(lightning_fit, Path(args.profile_dir) / "lightning_fit.txt")
        module, datamodule = build()
        with warnings.catch_warnings(), deterministic_torch(options.train_threads):
            warnings.simplefilter("ignore")
            _torch_profile(module, datamodule, Path(args.profile_dir) / "torch_bpr_epoch.txt")
    lightning_seconds, plain_seconds = min(seconds["lightning"]), min(seconds["plain"])
    _, datamodule = build()
    return {
        "model": "cf_bpr",
        "epochs": training.max_epochs,
        "batches_per_epoch": len(datamodule.train_dataloader()),
        "train_pairs": int(data.train.nnz),
        "repeats": args.repeats,
        "seconds": seconds,
        "lightning_seconds": lightning_seconds,
        "plain_seconds": plain_seconds,
        "overhead_pct": round(100.0 * (lightning_seconds - plain_seconds) / plain_seconds, 1),
        "lightning_best_ndcg": best["lightning"],
        "plain_best_ndcg": best["plain"],
    }


def _torch_profile(module: Any, datamodule: Any, out: Path) -> None:
    """One training epoch of the plain loop under torch.profiler; the top operators by CPU time."""
    from torch.profiler import ProfilerActivity, profile

    optimizer = module.configure_optimizers()
    module.train()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for index, batch in enumerate(datamodule.train_dataloader()):
            optimizer.zero_grad(set_to_none=True)
            module.training_step(batch, index).backward()
            optimizer.step()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(profiler.key_averages().table(sort_by="cpu_time_total", row_limit=25))


CHILDREN = {"generate": child_generate, "setup": child_setup, "stage": child_stage, "lightning": child_lightning}


# ====================================================================== parent
def _write_config(folder: Path, preset: str, args: argparse.Namespace) -> Path:
    """The scale's YAML configuration: its own root, local Spark of the benchmark's shape."""
    import yaml

    extra = {"spark.ui.enabled": "false"}
    if args.spark_event_log:
        events = folder / "spark-events"
        events.mkdir(parents=True, exist_ok=True)
        extra.update({"spark.eventLog.enabled": "true", "spark.eventLog.dir": events.as_uri()})
    settings = {
        "paths": {"root": str(folder)},
        "generator": {"scale": preset},
        "spark": {"master": args.master, "driver_memory": args.driver_memory,
                  "shuffle_partitions": args.shuffle_partitions, "extra": extra},
    }
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=True))
    return path


def _measure(kind: str, config_path: Path, folder: Path, log_name: str, *extra: str) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--config", str(config_path), *extra]
    env = dict(os.environ, PE_ROOT=str(folder), PYSPARK_PYTHON=sys.executable)
    env.setdefault("OMP_NUM_THREADS", "2")
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    child = run_child(command, env, ROOT, log_path=logs / f"{log_name}.log")
    report = child.report()
    report["wall_seconds"] = round(child.wall_seconds, 2)
    report["peak_rss_mib"] = round(child.peak_rss_bytes / 2**20, 1)
    return report


def _rows(path: str) -> int:
    """Rows of a Parquet table (hive partitions; files starting with ``_`` or ``.`` ignored)."""
    import pyarrow.dataset as ds

    if not Path(path).exists():
        return 0
    return int(ds.dataset(path, format="parquet", partitioning="hive").count_rows())


def _sizes(config_path: Path, date: str, validate: dict[str, Any]) -> dict[str, int]:
    from personalization.lake import Lake

    config = _load(str(config_path))
    lake = Lake(config)
    return {
        "landing_lines": int(validate.get("result", {}).get("total", 0)),
        "events": _rows(lake.silver("events")),
        "users": _rows(lake.partition(lake.silver("users"), date)),
        "apps": _rows(lake.partition(lake.silver("apps"), date)),
        "profiles": _rows(lake.partition(lake.gold("profiles"), date)),
        "interactions": _rows(lake.partition(lake.gold("interactions"), date)),
    }


def _setup_lines(config_path: Path, dates: list[str]) -> int:
    """Raw lines of the landing dates ingested in setup (from their validation records)."""
    from personalization.pipeline import read_record

    config = _load(str(config_path))
    return sum(int((read_record(config, day, "validate_raw_events") or {}).get("total", 0)) for day in dates)


def _cached(path: Path, measure) -> dict[str, Any]:  # noqa: ANN001 - a zero-argument callable
    """A measurement kept in ``path`` (generation and setup are not repeated for an existing world)."""
    if path.exists():
        return {**json.loads(path.read_text()), "reused": True}
    report = measure()
    path.write_text(json.dumps(report, indent=2, default=str))
    return {**report, "reused": False}


def run_scale(label: str, args: argparse.Namespace) -> dict[str, Any]:
    """Generate, set up and run one scale; returns its JSON record."""
    from personalization.config import load_config
    from personalization.generator import read_world_summary

    preset, _ = VARIANTS[label]
    folder = (Path(args.work_dir) / label).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    config_path = _write_config(folder, preset, args)
    profile = ["--profile-dir", str(folder / "profiles")] if args.profile else []
    print(f"== {label}: {folder}", flush=True)

    summary = read_world_summary(load_config(str(config_path)))
    generation_file = folder / "generate.json"
    if summary is None:
        generation_file.unlink(missing_ok=True)
    generation = _cached(generation_file, lambda: _measure("generate", config_path, folder, "generate",
                                                          "--scale-label", label))
    summary = read_world_summary(load_config(str(config_path)))
    if summary is None:
        raise RuntimeError(f"no world under {folder} after generation")
    date = args.last_date or summary.last_date
    if date not in summary.dates:
        raise SystemExit(f"--last-date {date} is not a landing date of the {label} world ({summary.dates[0]}..)")
    setup_file = folder / "setup.json"
    if generation.get("reused") is False:
        setup_file.unlink(missing_ok=True)
    setup = _cached(setup_file, lambda: _measure("setup", config_path, folder, "setup", "--date", date))
    print(f"   generate {generation.get('wall_seconds')} s, setup {setup.get('wall_seconds')} s", flush=True)

    stages: dict[str, dict[str, Any]] = {}
    for stage in NIGHTLY:
        stages[stage] = _measure("stage", config_path, folder, stage, "--stage", stage, "--date", date, *profile)
        # Progress on disk: a run stopped part-way still leaves what it measured.
        (folder / "stages.partial.json").write_text(json.dumps(stages, indent=2, default=str))
        print(f"   {stage}: {stages[stage]['seconds']:.1f} s (wall {stages[stage]['wall_seconds']} s, "
              f"peak {stages[stage]['peak_rss_mib']} MiB)", flush=True)
    sizes = _sizes(config_path, date, stages["validate_raw_events"])
    sizes["raw_lines"] = int(summary.n_lines)
    sizes["landing_lines_setup"] = _setup_lines(config_path, summary.dates[:summary.dates.index(date)])
    for stage, record in stages.items():
        size_key = SIZE_OF[stage]
        record["size_key"], record["size"] = size_key, sizes[size_key]
        if stage in SPARK_STAGES:
            record["input_rows"] = sizes["events"] if size_key == "events" else sizes[size_key]
            record["rows_per_second"] = round(record["input_rows"] / record["seconds"], 1) if record["seconds"] else None

    components: dict[str, Any] = {}
    validate = stages["validate_raw_events"]
    gx = validate.get("timings", {})
    if gx:
        gx_seconds = gx.get("gx_aggregates", 0.0) + gx.get("gx_expectations", 0.0)
        components["gx_share_of_ingestion"] = {
            **{k: round(v, 3) for k, v in gx.items()},
            "gx_seconds": round(gx_seconds, 3),
            "ingestion_seconds": round(validate["seconds"], 3),
            "share_pct": round(100.0 * gx_seconds / validate["seconds"], 1),
        }
    if not args.skip_components:
        components["lightning_vs_plain"] = _measure("lightning", config_path, folder, "lightning", "--date", date,
                                                    "--repeats", str(args.repeats), *profile)
        print(f"   lightning vs plain: {components['lightning_vs_plain']['overhead_pct']} %", flush=True)
        components["scoring"] = _scoring(folder, sizes, label, args)
    nightly_seconds = sum(record["seconds"] for record in stages.values())
    nightly_wall = sum(record["wall_seconds"] for record in stages.values())
    return {
        "scale": label,
        "preset": preset,
        "date": date,
        "history_dates": summary.dates.index(date),
        "world_dates": len(summary.dates),
        "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "load_average_at_end": list(os.getloadavg())},
        "spark": {"master": args.master, "driver_memory": args.driver_memory,
                  "shuffle_partitions": args.shuffle_partitions},
        "sizes": sizes,
        "generate": generation,
        "setup": setup,
        "stages": stages,
        "nightly_stage_seconds": round(nightly_seconds, 1),
        "nightly_wall_seconds": round(nightly_wall, 1),
        "nightly_peak_rss_mib": max(record["peak_rss_mib"] for record in stages.values()),
        "components": components,
    }


def _scoring(folder: Path, sizes: dict[str, int], label: str, args: argparse.Namespace) -> dict[str, Any]:
    """bench_scoring.py at this world's users x apps (its own child processes); its JSON as is."""
    out = folder / "scoring.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_scoring.py"), "--users", str(max(sizes["users"], 1)),
               "--apps", str(max(sizes["apps"], 1)), "--output", str(out)]
    if args.als_users:
        command += ["--als-users", str(args.als_users)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ))
    if done.returncode != 0 or not out.exists():
        print(f"   scoring benchmark failed for {label}: {done.stderr[-2000:]}", flush=True)
        return {"error": done.stderr[-2000:]}
    print(f"   scoring benchmark: {time.perf_counter() - started:.0f} s", flush=True)
    return json.loads(out.read_text())


def _git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip()


# ================================================================= summary
def scaling(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per stage: sizes and seconds per scale, the fitted exponent, pairwise growth ratios, a flag.

    The curve uses the scales of the preset ladder (tiny, small, medium, large); ``small2x``
    only feeds the memory bounds.
    """
    ladder = [r for r in records if r["scale"] in ("tiny", "small", "medium", "large")]
    out: dict[str, Any] = {}
    for stage in ("generate", "setup", *NIGHTLY):
        points = []
        for record in ladder:
            if stage in ("generate", "setup"):
                size = record["sizes"]["raw_lines"] if stage == "generate" else record["sizes"]["landing_lines_setup"]
                seconds = record[stage].get("seconds")
            else:
                size, seconds = record["stages"][stage]["size"], record["stages"][stage]["seconds"]
            if seconds:
                points.append({"scale": record["scale"], "size": size, "seconds": round(seconds, 3)})
        exponent = growth_exponent([p["size"] for p in points], [p["seconds"] for p in points])
        ratios = [
            {"from": a["scale"], "to": b["scale"],
             "growth_ratio": _round(growth_ratio(a["size"], a["seconds"], b["size"], b["seconds"]))}
            for a, b in zip(points, points[1:], strict=False)
        ]
        last_pair = growth_exponent([p["size"] for p in points[-2:]], [p["seconds"] for p in points[-2:]])
        out[stage] = {
            "size_key": SIZE_OF[stage],
            "points": points,
            "exponent": _round(exponent),
            "exponent_last_pair": _round(last_pair),
            "growth_ratios": ratios,
            "super_linear": bool(exponent is not None and exponent > FLAG_EXPONENT),
        }
    return out


def extrapolate(records: list[dict[str, Any]], curve: dict[str, Any]) -> dict[str, Any]:
    """Each nightly stage at 10M and 100M users, from the two largest measured scales.

    Every size (events, interactions) is assumed to grow with users, as it does across the
    presets (~100 events per user). Where the last pair grows at least linearly (b >= 1),
    the power law ``t_base * factor ** b`` is used. Where it grows sub-linearly, the stage is
    fixed start-up cost plus linear work: ``t = t_base + slope * (size - size_base)`` with the
    pair's marginal seconds per unit (the whole ``t_base / size_base`` if the slope is not
    positive). Seconds are on this machine's 2 cores; core-hours = 2x.
    """
    ladder = [r for r in records if r["scale"] in ("tiny", "small", "medium", "large")]
    if not ladder:
        return {}
    base = ladder[-1]
    users = base["sizes"]["users"]
    out: dict[str, Any] = {"base_scale": base["scale"], "base_users": users, "targets": {}}
    for target in TARGET_USERS:
        factor = target / users
        per_stage, groups = {}, {name: 0.0 for name in SLOTS}
        for stage in NIGHTLY:
            seconds_base, size_base = base["stages"][stage]["seconds"], base["stages"][stage]["size"]
            b = curve[stage]["exponent_last_pair"]
            points = curve[stage]["points"]
            if b is not None and b >= 1.0:
                model, seconds = f"power b={b:.2f}", seconds_base * factor**b
            else:
                slope = 0.0
                if len(points) >= 2 and points[-1]["size"] != points[-2]["size"]:
                    slope = (points[-1]["seconds"] - points[-2]["seconds"]) / (points[-1]["size"] - points[-2]["size"])
                if slope <= 0:
                    slope = seconds_base / max(size_base, 1)
                model = f"fixed + {slope:.3g} s/unit"
                seconds = seconds_base + slope * size_base * (factor - 1)
            core_seconds = seconds * (os.cpu_count() or 2)
            per_stage[stage] = {"model": model, "seconds_on_2_cores": round(seconds),
                                "core_hours": round(core_seconds / 3600, 1)}
            groups[_group(stage)] += core_seconds
        cores = {name: round(core_seconds / (SLOTS[name] * PARALLEL_EFFICIENCY)) for name, core_seconds in
                 groups.items()}
        out["targets"][str(target)] = {"factor": round(factor, 1), "stages": per_stage,
                                       "core_hours_by_group": {k: round(v / 3600, 1) for k, v in groups.items()},
                                       "cores_for_slot": cores}
    out["slots_seconds"] = SLOTS
    out["parallel_efficiency"] = PARALLEL_EFFICIENCY
    return out


def memory_bounds(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Peak RSS of feature building and scoring per scale (users), incl. the 2x-users variant."""
    rows = []
    for record in records:
        for stage in ("build_features", "score_users"):
            rows.append({"scale": record["scale"], "stage": stage, "users": record["sizes"]["users"],
                         "events": record["sizes"]["events"],
                         "peak_rss_mib": record["stages"][stage]["peak_rss_mib"]})
    return rows


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def write_summary(results_dir: Path) -> dict[str, Any]:
    """Merge every ``pipeline_<scale>.json`` into ``pipeline.json`` and ``pipeline.md``."""
    records = []
    for label in VARIANTS:
        path = results_dir / f"pipeline_{label}.json"
        if path.exists():
            records.append(json.loads(path.read_text()))
    curve = scaling(records)
    summary = {
        "scales": [r["scale"] for r in records],
        "flag_exponent": FLAG_EXPONENT,
        "scaling": curve,
        "memory_bounds": memory_bounds(records),
        "extrapolation": extrapolate(records, curve),
        "runs": {r["scale"]: r for r in records},
    }
    (results_dir / "pipeline.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (results_dir / "pipeline.md").write_text(markdown(summary))
    return summary


def markdown(summary: dict[str, Any]) -> str:
    """The Markdown summary of :func:`write_summary`'s JSON."""
    runs = summary["runs"]
    lines = ["# Pipeline benchmark", "",
             "Nightly stages for the last landing date, each in its own process (local Spark), on this machine.",
             "Seconds are inside the stage; wall adds the process and JVM start. Peak RSS: child + JVM.", ""]
    for label, run in runs.items():
        s = run["sizes"]
        lines += [f"## {label} ({s['users']} users, {s['apps']} apps, {s['events']} events, "
                  f"{s['interactions']} interactions; {run['measured_at']}, commit {run['git_commit']})", "",
                  f"Generation {run['generate'].get('seconds', 0):.1f} s; setup (ingest {run.get('history_dates', '')} "
                  f"earlier dates, {s['landing_lines_setup']} lines) "
                  f"{run['setup'].get('seconds', 0):.1f} s. Nightly: {run['nightly_stage_seconds']} s in stages, "
                  f"{run['nightly_wall_seconds']} s wall, peak {run['nightly_peak_rss_mib']} MiB.", "",
                  "| stage | seconds | wall s | peak RSS MiB | input rows | rows/s |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for stage, record in run["stages"].items():
            lines.append(f"| {stage} | {record['seconds']:.1f} | {record['wall_seconds']:.1f} | "
                         f"{record['peak_rss_mib']:.0f} | {record.get('input_rows', '')} | "
                         f"{record.get('rows_per_second', '') or ''} |")
        components = run.get("components", {})
        lines.append("")
        if "gx_share_of_ingestion" in components:
            gx = components["gx_share_of_ingestion"]
            lines.append(f"- GX: {gx['gx_seconds']} s of {gx['ingestion_seconds']} s ingestion "
                         f"({gx['share_pct']} %; import {gx.get('gx_import', 0)} s, Spark aggregates "
                         f"{gx.get('gx_aggregates', 0)} s, suites + Data Docs {gx.get('gx_expectations', 0)} s)")
        if "lightning_vs_plain" in components:
            lv = components["lightning_vs_plain"]
            lines.append(f"- Lightning vs plain loop ({lv['model']}, {lv['epochs']} epochs x "
                         f"{lv['batches_per_epoch']} batches): {lv['lightning_seconds']} s vs "
                         f"{lv['plain_seconds']} s, overhead {lv['overhead_pct']} %")
        scoring = components.get("scoring", {})
        if scoring.get("ratios"):
            lines.append(f"- scoring (bench_scoring.py at these users x apps): {_scoring_line(scoring)}")
        lines.append("")
    lines += ["## Growth exponents (seconds ~ size^b; flagged when b > 1.2)", "",
              "Growth ratio = (time ratio) / (size ratio) between consecutive scales; 1.0 is linear.", "",
              "| stage | size | points (size: s) | b (all) | b (last pair) | growth ratios | flag |",
              "| --- | --- | --- | ---: | ---: | --- | --- |"]
    for stage, fit in summary["scaling"].items():
        points = ", ".join(f"{p['scale']} {p['size']}: {p['seconds']:.1f}" for p in fit["points"])
        flag = "SUPER-LINEAR" if fit["super_linear"] else ""
        ratios = ", ".join(f"{r['from']}->{r['to']} {r['growth_ratio']}" for r in fit["growth_ratios"])
        lines.append(f"| {stage} | {fit['size_key']} | {points} | {fit['exponent']} | "
                     f"{fit['exponent_last_pair']} | {ratios} | {flag} |")
    lines += ["", "## Memory bounds (peak RSS MiB)", "", "| scale | stage | users | events | peak RSS MiB |",
              "| --- | --- | ---: | ---: | ---: |"]
    for row in summary["memory_bounds"]:
        lines.append(f"| {row['scale']} | {row['stage']} | {row['users']} | {row['events']} | "
                     f"{row['peak_rss_mib']:.0f} |")
    extrapolation = summary.get("extrapolation") or {}
    if extrapolation:
        lines += ["", f"## Extrapolation from {extrapolation['base_scale']} "
                      f"({extrapolation['base_users']} users)", "",
                  "| stage | model | " + " | ".join(f"{int(t) // 10**6}M users: s on 2 cores / core-h"
                                                    for t in extrapolation["targets"]) + " |",
                  "| --- | ---: | " + " | ".join("---:" for _ in extrapolation["targets"]) + " |"]
        first = next(iter(extrapolation["targets"].values()))
        for stage in first["stages"]:
            cells = [f"{t['stages'][stage]['seconds_on_2_cores']} / {t['stages'][stage]['core_hours']}"
                     for t in extrapolation["targets"].values()]
            lines.append(f"| {stage} | {first['stages'][stage]['model']} | " + " | ".join(cells) + " |")
        for target, values in extrapolation["targets"].items():
            lines.append(f"\n{int(target) // 10**6}M users: core-hours by group {values['core_hours_by_group']}; "
                         f"cores to fit each group's slot {extrapolation['slots_seconds']} s at "
                         f"{extrapolation['parallel_efficiency']} efficiency: {values['cores_for_slot']}")
    return "\n".join(lines) + "\n"


def _scoring_line(scoring: dict[str, Any]) -> str:
    """bench_scoring.py's headline ratios (project vs bare torch and Spark ALS; 2x/1x users memory)."""
    ratios = scoring.get("ratios", {})
    return ", ".join(f"{name} {value:.2f}" for name, value in sorted(ratios.items()) if isinstance(value, float))


# ====================================================================== main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", nargs="+", default=["tiny", "small"], choices=sorted(VARIANTS))
    parser.add_argument("--work-dir", default=str(ROOT / "results" / "bench_work" / "pipeline"),
                        help="one project root per scale under it (never the project's own var/)")
    parser.add_argument("--results-dir", default=str(ROOT / "results"))
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="4g")
    parser.add_argument("--shuffle-partitions", type=int, default=8)
    parser.add_argument("--profile", action="store_true", help="cProfile each stage; torch.profiler one epoch")
    parser.add_argument("--spark-event-log", action="store_true", help="write Spark event logs per scale")
    parser.add_argument("--skip-components", action="store_true", help="no Lightning or scoring comparisons")
    parser.add_argument("--als-users", type=int, default=0, help="users for Spark ALS in the scoring comparison")
    parser.add_argument("--last-date", help="run the nightly for this landing date instead of the world's last "
                        "(a shorter history: fewer events in the window)")
    parser.add_argument("--summary-only", action="store_true", help="only rebuild pipeline.json/.md")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--date", help=argparse.SUPPRESS)
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--scale-label", help=argparse.SUPPRESS)
    parser.add_argument("--profile-dir", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=2, help="Lightning vs plain loop: runs of each (fastest counts)")
    args = parser.parse_args(argv)
    if args.child:
        print_report(CHILDREN[args.child](args))
        return 0
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        for label in args.scales:
            record = run_scale(label, args)
            (results_dir / f"pipeline_{label}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    write_summary(results_dir)
    print(f"wrote {results_dir / 'pipeline.json'} and {results_dir / 'pipeline.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
