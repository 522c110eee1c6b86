"""Tests of the synthetic world generator (personalization.generator).

Most checks share one ``tiny`` world (seed 42) generated once per module; the
bad-record counts are re-derived here by an independent line classifier that
follows jobs.columns.QUARANTINE_REASONS precedence, without generator code.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import hashlib
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs import columns as C
from personalization.config import Config, load_config
from personalization.generator import (
    CATEGORIES,
    SCALE_PRESETS,
    RecommendationListPolicy,
    ScalePreset,
    WorldSummary,
    generate_world,
    read_world_summary,
    world_dates,
)
from personalization.lake import Lake

#: A few users in chunks of 50 (several part files per day), 3 days.
MINI = ScalePreset(
    "mini",
    n_users=120,
    n_apps=60,
    days=3,
    new_users_per_day=2,
    new_apps_per_day=1,
    activity_scale=1.3,
    chunk_users=50,
)


def make_config(root: Path, **generator: object) -> Config:
    settings = {"scale": "tiny", "seed": 42, "start_date": "2026-10-01", "bad_record_rate": 0.01, **generator}
    return load_config(
        overrides={"generator": settings, "paths": {"root": str(root), "lake_root": str(root / "lake")}},
        environ={},
    )


def file_digests(lake_root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(lake_root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(lake_root.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------- independent validator
def _parse_ts(text: object) -> dt.datetime | None:
    try:
        return dt.datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None


@dataclasses.dataclass
class Landed:
    """Every raw line of a world, classified like the validation job would."""

    lines: dict[str, list[str]]  # landing date -> lines (part files in name order)
    reasons: dict[str, collections.Counter]  # landing date -> reason -> count
    clean: list[tuple[str, dict]]  # (landing date, record) of valid lines
    users: dict[str, dict]  # user_id -> raw user record
    apps: dict[str, dict]  # app_id -> raw app record
    manifests: dict[str, dict]


def classify_world(config: Config) -> Landed:
    lake = Lake(config)
    max_bytes = config.validation.max_field_bytes
    tolerance = dt.timedelta(minutes=config.validation.future_tolerance_minutes)
    dates = sorted(
        p.name.split("=")[1] for p in Path(lake.raw_events()).iterdir() if p.name.startswith("date=")
    )
    users: dict[str, dict] = {}
    apps: dict[str, dict] = {}
    seen_ids: set[str] = set()
    landed = Landed({}, {}, [], users, apps, {})
    for date in dates:
        for line in Path(lake.raw_users(date), "users.jsonl").read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            users[record["user_id"]] = record
        for line in Path(lake.raw_apps(date), "apps.jsonl").read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            apps[record["app_id"]] = record
        landing_end = dt.datetime.fromisoformat(date).replace(tzinfo=dt.timezone.utc) + dt.timedelta(days=1)
        lines = [
            line
            for part in sorted(Path(lake.raw_events(date)).glob("part-*.jsonl"))
            for line in part.read_text(encoding="utf-8").splitlines()
        ]
        reasons: collections.Counter = collections.Counter()
        for line in lines:
            reason = None
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                reason = "malformed_json"
            elif any(isinstance(v, str) and len(v.encode("utf-8")) > max_bytes for v in record.values()):
                reason = "oversized_field"
            elif not record.get("user_id"):
                reason = "missing_user_id"
            elif record.get("event_type") not in C.EVENT_TYPES:
                reason = "invalid_event_type"
            elif _parse_ts(record.get("ts")) is None:
                reason = "bad_timestamp"
            elif _parse_ts(record["ts"]) > landing_end + tolerance:
                reason = "future_timestamp"
            elif record["event_type"] in C.APP_EVENT_TYPES and not record.get("app_id"):
                reason = "missing_app_id"
            elif record["user_id"] not in users:
                reason = "unknown_user_id"
            elif record.get("app_id") is not None and record["app_id"] not in apps:
                reason = "unknown_app_id"
            elif record.get("duration_s") is not None and record["duration_s"] < 0:
                reason = "negative_duration"
            elif (
                (record.get("rating_value") is not None and not 1 <= record["rating_value"] <= 5)
                or (record.get("amount") is not None and record["amount"] < 0)
                or (record.get("position") is not None and record["position"] < 1)
            ):
                reason = "out_of_range"
            elif record["event_id"] in seen_ids:
                reason = "duplicate_event_id"
            if reason is None:
                seen_ids.add(record["event_id"])
                landed.clean.append((date, record))
            else:
                reasons[reason] += 1
        landed.lines[date] = lines
        landed.reasons[date] = reasons
        landed.manifests[date] = json.loads(Path(lake.raw_manifest(date)).read_text(encoding="utf-8"))
    return landed


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, WorldSummary, Landed]:
    root = tmp_path_factory.mktemp("tiny")
    config = make_config(root)
    summary = generate_world(config, progress=False)
    return config, summary, classify_world(config)


# --------------------------------------------------------------------------- tests
def test_tiny_world_sizes_and_summary(tiny: tuple[Config, WorldSummary, Landed]) -> None:
    config, summary, landed = tiny
    assert summary.dates == [f"2026-10-{d:02d}" for d in range(1, 15)]
    assert (summary.first_date, summary.last_date) == ("2026-10-01", "2026-10-14")
    assert 250 <= summary.n_users <= 400 and summary.n_users == len(landed.users)
    assert 120 <= summary.n_apps <= 200 and summary.n_apps == len(landed.apps)
    total = sum(len(lines) for lines in landed.lines.values())
    assert 20_000 <= total <= 40_000 and summary.n_lines == total
    assert summary.n_events == len(landed.clean)
    assert read_world_summary(config) == summary
    assert world_dates(config) == summary.dates
    manifest = json.loads(Path(Lake(config).world_manifest()).read_text())
    assert (
        manifest["scale"] == "tiny" and manifest["seed"] == 42 and manifest["categories"] == list(CATEGORIES)
    )
    assert "lake_root" not in manifest  # keeps world.json identical across lake roots


def test_read_world_summary_absent(tmp_path: Path) -> None:
    assert read_world_summary(make_config(tmp_path)) is None


def test_same_seed_same_bytes_and_other_seed_differs(
    tiny: tuple[Config, WorldSummary, Landed], tmp_path: Path
) -> None:
    config, _, _ = tiny
    again = make_config(tmp_path / "again")
    generate_world(again, progress=False)
    reference = file_digests(Path(config.lake_root))
    assert (
        len(reference) == 14 * 4 + 3 + 1
    )  # events, apps, users, manifest per day; editorial x2, world; traits
    assert file_digests(Path(again.lake_root)) == reference
    other = make_config(tmp_path / "other", seed=43)
    generate_world(other, progress=False)
    digests = file_digests(Path(other.lake_root))
    assert digests.keys() == reference.keys()
    assert all(digests[name] != reference[name] for name in reference if "/events/" in name)


def test_bad_records_match_manifest_and_rate(tiny: tuple[Config, WorldSummary, Landed]) -> None:
    _, summary, landed = tiny
    injected = (
        "malformed_json",
        "oversized_field",
        "missing_user_id",
        "future_timestamp",
        "unknown_app_id",
        "negative_duration",
        "duplicate_event_id",
    )
    total_bad = 0
    for date, manifest in landed.manifests.items():
        found = landed.reasons[date]
        assert manifest["injected"] == {reason: found.get(reason, 0) for reason in C.QUARANTINE_REASONS}, date
        assert manifest["total_lines"] == len(landed.lines[date])
        assert manifest["valid_lines"] == sum(1 for d, _ in landed.clean if d == date)
        bad = sum(found.values())
        assert abs(bad / manifest["total_lines"] - 0.01) < 0.002, date  # per-day rate
        total_bad += bad
    total = summary.n_lines
    assert abs(total_bad / total - 0.01) < 0.0005
    assert set(summary.injected) == set(C.QUARANTINE_REASONS)
    assert sum(summary.injected.values()) == total_bad
    for reason in injected:  # spread roughly evenly over the seven injected reasons
        assert summary.injected[reason] >= 0.6 * total_bad / len(injected), reason


def test_duplicates_are_verbatim_copies_from_same_or_previous_date(
    tiny: tuple[Config, WorldSummary, Landed],
) -> None:
    _, _, landed = tiny
    dates = sorted(landed.lines)
    from_previous = 0
    for i, date in enumerate(dates):
        lines = landed.lines[date]
        previous = set(landed.lines[dates[i - 1]]) if i else set()
        counts = collections.Counter(lines)
        duplicates = sum(n - 1 for n in counts.values() if n > 1) + sum(
            1 for line in counts if line in previous
        )
        assert duplicates == landed.reasons[date].get("duplicate_event_id", 0), date
        from_previous += sum(1 for line in counts if line in previous)
    assert from_previous > 0


def test_valid_events_reference_known_users_and_released_apps(
    tiny: tuple[Config, WorldSummary, Landed],
) -> None:
    _, _, landed = tiny
    types = collections.Counter()
    for landing, record in landed.clean:
        ts = _parse_ts(record["ts"])
        event_date = ts.date().isoformat()
        assert event_date in (landing, (dt.date.fromisoformat(landing) - dt.timedelta(days=1)).isoformat())
        user = landed.users[record["user_id"]]
        assert user["signup_date"] <= event_date
        assert (record["tz"], record["country"], record["city"], record["device"]) == (
            user["tz"],
            user["country"],
            user["city"],
            user["device"],
        )
        assert record["variant"] is None and record["ip"].count(".") == 3
        types[record["event_type"]] += 1
        if record["event_type"] in C.APP_EVENT_TYPES:
            app = landed.apps[record["app_id"]]
            assert app["release_date"] <= event_date
            if record["event_type"] == "impression":  # the store only shows what the user may see
                assert user["country"] in app["regions"]
                assert record["surface"] in C.SURFACES and record["position"] >= 1
    assert set(types) == set(C.EVENT_TYPES)
    assert types.most_common(1)[0][0] == "app_open"  # usage is the bulk of the volume


def test_late_arrivals_present(tiny: tuple[Config, WorldSummary, Landed]) -> None:
    _, summary, landed = tiny
    late = collections.Counter(landing for landing, record in landed.clean if record["ts"][:10] < landing)
    assert late["2026-10-01"] == 0
    assert all(landed.manifests[date]["late_lines"] == late[date] for date in landed.manifests)
    assert summary.late_lines == sum(late.values())
    assert 0.003 < summary.late_lines / summary.n_events < 0.007


def test_consent_changes_present(tiny: tuple[Config, WorldSummary, Landed]) -> None:
    _, _, landed = tiny
    changes = [record for _, record in landed.clean if record["event_type"] == "consent_change"]
    assert {"behavioral", "location"} <= {record["consent_type"] for record in changes}
    assert all(
        record["consent_value"] is False for record in changes if record["consent_type"] == "behavioral"
    )
    assert any(not user["consent_behavioral"] for user in landed.users.values())  # some opt out at signup


def test_popularity_is_heavy_tailed(tiny: tuple[Config, WorldSummary, Landed]) -> None:
    _, _, landed = tiny
    installs = collections.Counter(
        record["app_id"] for _, record in landed.clean if record["event_type"] == "install"
    )
    counts = np.sort(np.array([installs.get(app, 0) for app in landed.apps]))[::-1]
    assert counts[: len(counts) // 10].sum() / counts.sum() > 0.5
    free = np.mean([app["price"] == 0 for app in landed.apps.values()])
    assert 0.75 < free < 0.95


def test_tastes_are_learnable_from_installs(tiny: tuple[Config, WorldSummary, Landed]) -> None:
    config, _, landed = tiny
    traits = pq.read_table(Lake(config).sim_truth()).to_pylist()
    assert len(traits) == len(landed.users)
    share = collections.Counter(app["category"] for app in landed.apps.values())
    installed = collections.defaultdict(list)
    for _, record in landed.clean:
        if record["event_type"] == "install":
            installed[record["user_id"]].append(landed.apps[record["app_id"]]["category"])
    hits, chance = [], []
    for row in traits:
        assert len(row["taste"]) == len(CATEGORIES) and abs(sum(row["taste"]) - 1) < 1e-6
        categories = installed.get(row["user_id"], [])
        if len(categories) >= 3:
            top = {CATEGORIES[i] for i in np.argsort(row["taste"])[::-1][:3]}
            hits.append(np.mean([c in top for c in categories]))
            chance.append(sum(share[c] for c in top) / len(landed.apps))
    assert len(hits) >= 50
    assert np.mean(hits) > 3 * np.mean(chance)


def test_app_text_shares_category_vocabulary(tiny: tuple[Config, WorldSummary, Landed]) -> None:
    _, _, landed = tiny
    words = {
        a: set(app["description"].lower().replace(".", " ").replace(",", " ").replace(":", " ").split())
        for a, app in landed.apps.items()
    }
    apps = sorted(landed.apps)
    same, other = [], []
    for i, a in enumerate(apps):
        for b in apps[i + 1 :]:
            jaccard = len(words[a] & words[b]) / len(words[a] | words[b])
            (same if landed.apps[a]["category"] == landed.apps[b]["category"] else other).append(jaccard)
    assert np.mean(same) > 2 * np.mean(other)


def test_user_geography_is_consistent(tiny: tuple[Config, WorldSummary, Landed]) -> None:
    _, _, landed = tiny
    zones = {
        "US": {"America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles"},
        "GB": {"Europe/London"},
        "DE": {"Europe/Berlin"},
        "FR": {"Europe/Paris"},
        "IN": {"Asia/Kolkata"},
        "BR": {"America/Sao_Paulo"},
        "JP": {"Asia/Tokyo"},
        "ES": {"Europe/Madrid"},
    }
    for user in landed.users.values():
        assert user["tz"] in zones[user["country"]] and user["region"].startswith(user["country"] + "-")
        assert user["age_group"] in C.AGE_GROUPS and user["device"] in C.DEVICES
    assert any(user["gender"] is None for user in landed.users.values())


def test_rerun_overwrites_and_zero_rate_injects_nothing(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    generate_world(config, progress=False, preset=MINI)
    lake = Lake(config)
    assert sorted(p.name for p in Path(lake.raw_events("2026-10-03")).iterdir()) == [
        "part-00000.jsonl",
        "part-00001.jsonl",
        "part-00002.jsonl",
    ]
    quiet = make_config(tmp_path, bad_record_rate=0.0)
    summary = generate_world(quiet, progress=False, preset=dataclasses.replace(MINI, days=2))
    assert not Path(lake.raw_events("2026-10-03")).exists()
    assert sorted(p.name for p in Path(lake.raw_events()).iterdir()) == ["date=2026-10-01", "date=2026-10-02"]
    assert sum(summary.injected.values()) == 0 and summary.n_lines == summary.n_events
    landed = classify_world(quiet)
    assert all(not counter for counter in landed.reasons.values())
    assert landed.manifests["2026-10-02"]["late_lines"] > 0  # late lines travel per user chunk


def test_recommendation_policy_is_shown(tmp_path: Path) -> None:
    config = make_config(tmp_path, bad_record_rate=0.0)
    served = {f"u{u:07d}": ["a000003", "a000001", "a000002"] for u in range(0, 120, 2)}
    tags = {user: "exp:treatment" if int(user[1:]) % 4 else "exp:control" for user in served}
    generate_world(config, progress=False, preset=MINI, policy=RecommendationListPolicy(served, variants=tags))
    landed = classify_world(config)
    # Events from a served slate carry its variant; every other event is untagged.
    tagged = collections.Counter()
    for _, r in landed.clean:
        from_served = r["user_id"] in served and r.get("surface") == "for_you"
        expected = tags[r["user_id"]] if from_served and r["event_type"] != "search" else None
        assert r["variant"] == expected, r
        if expected:
            tagged[r["event_type"]] += 1
    assert tagged["impression"] and tagged["app_view"] and tagged["install"], tagged
    shown = [
        (r["user_id"], r["app_id"], r["position"])
        for _, r in landed.clean
        if r["event_type"] == "impression" and r["surface"] == "for_you" and r["user_id"] in served
    ]
    assert shown
    for user, app, position in shown:
        visible = [
            a
            for a in served[user]
            if landed.users[user]["country"] in landed.apps[a]["regions"]
            and (landed.apps[a]["age_rating"] <= 12 or landed.users[user]["age_group"] != "13-17")
        ]
        assert app == visible[position - 1]


def test_presets_and_dates() -> None:
    tiny, small, medium, large = (SCALE_PRESETS[name] for name in ("tiny", "small", "medium", "large"))
    assert (tiny.days, small.days, medium.days, large.days) == (14, 14, 30, 30)
    assert 250 <= tiny.total_users <= 400 and 2_500 <= small.total_users <= 3_500
    assert 90_000 <= medium.total_users <= 110_000 and large.total_users >= 9 * medium.total_users
    assert (
        120 <= tiny.total_apps <= 200
        and 700 <= small.total_apps <= 900
        and 9_000 <= medium.total_apps <= 11_000
    )
    # medium and large are simulated in user chunks, so a chunk-day of events bounds memory
    assert large.chunk_users <= 100_000 < large.total_users
    config = load_config(overrides={"generator": {"scale": "medium", "start_date": "2026-12-30"}}, environ={})
    dates = world_dates(config)
    assert len(dates) == 30 and dates[:3] == ["2026-12-30", "2026-12-31", "2027-01-01"]


def test_generation_streams_in_bounded_memory(tmp_path: Path) -> None:
    """Peak traced memory must not grow with the number of days (events are never accumulated)."""
    preset = ScalePreset(
        "stream",
        n_users=500,
        n_apps=50,
        days=2,
        new_users_per_day=0,
        new_apps_per_day=0,
        activity_scale=1.3,
        chunk_users=10_000,
    )
    config = make_config(tmp_path)
    # A first run imports modules and fills caches, which must not count as growth.
    generate_world(config, progress=False, preset=dataclasses.replace(preset, days=1))
    peaks = {}
    for days in (2, 6):
        tracemalloc.start()
        summary = generate_world(config, progress=False, preset=dataclasses.replace(preset, days=days))
        peaks[days] = (tracemalloc.get_traced_memory()[1], summary.n_lines)
        tracemalloc.stop()
    assert peaks[6][1] > 2.5 * peaks[2][1]  # three times the events ...
    assert peaks[6][0] < 1.25 * peaks[2][0]  # ... in about the same memory
