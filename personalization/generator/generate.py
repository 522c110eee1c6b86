"""Orchestration: generate a whole world into the lake's raw zone, day by day."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jobs import columns as C
from personalization.config import Config
from personalization.generator.policy import DefaultStorePolicy, ImpressionPolicy
from personalization.generator.presets import SCALE_PRESETS, ScalePreset
from personalization.generator.records import (
    INJECTED_REASONS,
    LATE_RATE,
    PREVIOUS_DAY_DUPLICATE_SHARE,
    LineFormatter,
    dumps,
    inject_bad_records,
    merge_late,
    sample_duplicate_pool,
    split_late,
)
from personalization.generator.simulate import DayEvents, simulate_chunk
from personalization.generator.vocabulary import CATEGORIES
from personalization.generator.world import SimWorld
from personalization.lake import Lake, check_date

GENERATOR_VERSION = "1.0.0"
#: Initial apps were released up to this many days before the start date.
CATALOGUE_AGE_DAYS = 1095
#: Initial users signed up up to this many days before the start date.
USER_AGE_DAYS = 730


@dataclass
class WorldSummary:
    """What a generated world contains (mirrors ``raw/_manifests/world.json``)."""

    first_date: str
    last_date: str
    dates: list[str]
    n_users: int  # users known on the last date
    n_apps: int  # apps in the catalogue on the last date
    n_events: int  # valid event lines over all dates (late arrivals included once)
    injected: dict[str, int]  # bad records per reason code, summed over dates
    lake_root: str
    scale: str = ""
    seed: int = 0
    n_lines: int = 0  # all raw event lines, bad records included
    late_lines: int = 0  # valid lines that landed one date after their event date
    categories: list[str] = field(default_factory=list)  # order of the hidden taste vectors


def resolve_preset(config: Config) -> ScalePreset:
    """The preset named by ``config.generator.scale``."""
    try:
        return SCALE_PRESETS[config.generator.scale]
    except KeyError:
        raise ValueError(
            f"unknown generator.scale {config.generator.scale!r}; known: {sorted(SCALE_PRESETS)}"
        ) from None


def world_dates(config: Config, preset: ScalePreset | None = None) -> list[str]:
    """The landing dates a world would have (YYYY-MM-DD), without generating it."""
    preset = preset or resolve_preset(config)
    start = dt.date.fromisoformat(check_date(config.generator.start_date))
    return [(start + dt.timedelta(days=d)).isoformat() for d in range(preset.days)]


def read_world_summary(config: Config) -> WorldSummary | None:
    """The summary of the world under ``config``'s lake root; None when none was (fully) generated."""
    path = Path(_local(Lake(config).world_manifest()))
    if not path.exists():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    names = {f.name for f in dataclasses.fields(WorldSummary)}
    return WorldSummary(**{k: v for k, v in manifest.items() if k in names}, lake_root=Lake(config).root)


def _local(path: str) -> str:
    if "://" in path:
        raise NotImplementedError(f"the generator writes to a local lake only for now, got {path!r}")
    return path


def _rng(seed: int, *key: int) -> np.random.Generator:
    """An independent stream per (purpose, day, chunk): days can be generated one at a time."""
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=key))


def _write_text(path: Path, lines: Iterable[str]) -> None:
    """Write lines atomically: a temp file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
        for line in lines:
            handle.write(line)
            handle.write("\n")
    os.replace(tmp, path)


def _write_json(path: Path, obj: object) -> None:
    _write_text(path, [json.dumps(obj, indent=2, ensure_ascii=False)])


class _Partition:
    """A partition folder written under a hidden temp name and renamed when complete,
    so readers never see a half-written partition (Spark ignores names starting with '.')."""

    def __init__(self, directory: str):
        self.final = Path(directory)
        self.tmp = self.final.with_name(f".tmp-{self.final.name}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)

    def write(self, name: str, lines: Iterable[str]) -> None:
        with open(self.tmp / name, "w", encoding="utf-8", newline="\n") as handle:
            for line in lines:
                handle.write(line)
                handle.write("\n")

    def commit(self) -> None:
        shutil.rmtree(self.final, ignore_errors=True)
        os.replace(self.tmp, self.final)


def _clear_previous_world(lake: Lake) -> None:
    # world.json goes first: a world without it is incomplete (see read_world_summary).
    Path(_local(lake.world_manifest())).unlink(missing_ok=True)
    for folder in (
        lake.raw_events(),
        lake.raw_apps(),
        lake.raw_users(),
        lake.editorial(),
        str(Path(lake.world_manifest()).parent),
    ):
        shutil.rmtree(folder, ignore_errors=True)
    Path(lake.sim_truth()).unlink(missing_ok=True)


def start_world(
    preset: ScalePreset, start: dt.date, seed: int
) -> tuple[SimWorld, list[dict], list[dict], list[dict], list[dict]]:
    """The world before day one: ``(world, initial apps, initial users, featured, denylist)`` records."""
    rng = _rng(seed, 0)
    world = SimWorld(preset, start, rng)
    initial_apps = world.add_apps(-rng.integers(1, CATALOGUE_AGE_DAYS + 1, preset.n_apps), rng)
    initial_users = world.add_users(-rng.integers(1, USER_AGE_DAYS + 1, preset.n_users), rng)
    featured, denied = world.choose_editorial(rng)
    world.bootstrap_installs(np.arange(world.n_users), -1, rng)
    return world, initial_apps, initial_users, featured, denied


def grow_world(world: SimWorld, preset: ScalePreset, day: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Release the apps and sign up the users of ``day``; returns their records."""
    day_rng = _rng(seed, 1, day)
    apps = world.add_apps(np.full(preset.new_apps_per_day, day), day_rng)
    users = world.add_users(np.full(preset.new_users_per_day, day), day_rng)
    return apps, users


def simulate_day_chunk(
    world: SimWorld, preset: ScalePreset, lo: int, hi: int, day: int, policy: ImpressionPolicy, seed: int,
    chunk: int,
) -> DayEvents:
    """Users ``lo..hi-1`` through ``day`` with the chunk's own seeded random stream."""
    return simulate_chunk(world, lo, hi, day, policy, _rng(seed, 2, day, chunk), preset.activity_scale)


def generate_world(
    config: Config,
    *,
    progress: bool = True,
    policy: ImpressionPolicy | None = None,
    preset: ScalePreset | None = None,
) -> WorldSummary:
    """Generate the synthetic store into ``Lake(config)``'s raw zone, replacing any previous world.

    Uses ``config.generator.{scale, seed, start_date, bad_record_rate}``; ``preset``
    overrides the scale (tests use small custom worlds) and ``policy`` chooses what the
    store shows (default :class:`DefaultStorePolicy`). Same inputs give byte-identical files.
    """
    from tqdm.auto import tqdm

    settings = config.generator
    preset = preset or resolve_preset(config)
    rate = float(settings.bad_record_rate)
    if not 0.0 <= rate < 0.5:
        raise ValueError(f"generator.bad_record_rate must be in [0, 0.5), got {rate}")
    dates = world_dates(config, preset)
    start = dt.date.fromisoformat(dates[0])
    seed = int(settings.seed)
    lake = Lake(config)
    _local(lake.root)
    _clear_previous_world(lake)
    policy = policy or DefaultStorePolicy()

    # ---------------------------------------------- the world before day one
    world, initial_apps, initial_users, featured, denied = start_world(preset, start, seed)
    _write_text(Path(lake.editorial()) / "featured.jsonl", (dumps(r) for r in featured))
    _write_text(Path(lake.editorial()) / "denylist.jsonl", (dumps(r) for r in denied))

    formatter = LineFormatter(world)
    late_carry: dict[int, list[str]] = {}
    duplicate_pool: dict[int, list[str]] = {}
    injected_total = dict.fromkeys(C.QUARANTINE_REASONS, 0)
    n_events = n_lines = n_late = 0
    for day in tqdm(range(preset.days), desc="generating days", unit="day", disable=not progress):
        date = dates[day]
        apps, users = grow_world(world, preset, day, seed)
        if day == 0:
            apps, users = initial_apps + apps, initial_users + users
        apps_partition = _Partition(lake.raw_apps(date))
        apps_partition.write("apps.jsonl", (dumps(r) for r in apps))
        apps_partition.commit()
        users_partition = _Partition(lake.raw_users(date))
        users_partition.write("users.jsonl", (dumps(r) for r in users))
        users_partition.commit()

        events_partition = _Partition(lake.raw_events(date))
        injected = dict.fromkeys(C.QUARANTINE_REASONS, 0)
        day_lines = day_valid = day_late = 0
        is_last = day == preset.days - 1
        for chunk, lo in enumerate(range(0, world.n_users, preset.chunk_users)):
            hi = min(lo + preset.chunk_users, world.n_users)
            events = simulate_day_chunk(world, preset, lo, hi, day, policy, seed, chunk)
            line_rng = _rng(seed, 3, day, chunk)
            own, own_types, late_out = split_late(
                formatter.format(events, lo, hi, line_rng),
                events.etype,
                0.0 if is_last else LATE_RATE,
                line_rng,
            )
            del events
            late_in = late_carry.pop(chunk, [])
            valid = merge_late(own, late_in, line_rng)
            lines, counts = inject_bad_records(
                valid, own, own_types, rate, duplicate_pool.pop(chunk, []), line_rng
            )
            events_partition.write(f"part-{chunk:05d}.jsonl", lines)
            late_carry[chunk] = late_out
            expected_duplicates = len(valid) * rate / (1.0 - rate) / len(INJECTED_REASONS) if rate else 0.0
            duplicate_pool[chunk] = sample_duplicate_pool(
                valid,
                math.ceil(expected_duplicates * PREVIOUS_DAY_DUPLICATE_SHARE) + 4 if rate else 0,
                line_rng,
            )
            for reason, count in counts.items():
                injected[reason] += count
            day_lines += len(lines)
            day_valid += len(valid)
            day_late += len(late_in)
        events_partition.commit()
        _write_json(
            Path(lake.raw_manifest(date)),
            {
                "date": date,
                "total_lines": day_lines,
                "valid_lines": day_valid,
                "late_lines": day_late,
                "injected": injected,
            },
        )
        for reason, count in injected.items():
            injected_total[reason] += count
        n_lines += day_lines
        n_events += day_valid
        n_late += day_late

    truth_path = Path(lake.sim_truth())
    truth_path.parent.mkdir(parents=True, exist_ok=True)
    import pyarrow.parquet as pq

    tmp = truth_path.with_name(f".{truth_path.name}.tmp")
    pq.write_table(world.traits_table(), tmp)
    os.replace(tmp, truth_path)

    summary = WorldSummary(
        first_date=dates[0],
        last_date=dates[-1],
        dates=dates,
        n_users=world.n_users,
        n_apps=world.n_apps,
        n_events=n_events,
        injected=injected_total,
        lake_root=lake.root,
        scale=preset.name,
        seed=seed,
        n_lines=n_lines,
        late_lines=n_late,
        categories=list(CATEGORIES),
    )
    manifest = {key: value for key, value in dataclasses.asdict(summary).items() if key != "lake_root"}
    manifest.update(
        {
            "generator_version": GENERATOR_VERSION,
            "start_date": dates[0],
            "bad_record_rate": rate,
            "preset": dataclasses.asdict(preset),
        }
    )
    _write_json(Path(lake.world_manifest()), manifest)
    return summary
