"""Readers versus publishes on PostgreSQL: are switches invisible to the apps?

16 reader threads (one psycopg2 connection each, loopback) fetch random users'
home pages with ``sql/queries/home_page.sql`` while two publishes build and
switch new versions behind the stable views. Every read is checked: it must
return the user's complete page (every surface, ranks 1..N) from ONE version
(a single ``model_version``). Reports errors, mixed-version reads and latency
percentiles (overall and while a publish was running) to
``results/serving_readers.json``; exits 1 on any error or mixed read.

Usage::

    .venv/bin/python benchmarks/bench_serving_readers.py               # 20k users, 16 readers
    .venv/bin/python benchmarks/bench_serving_readers.py --users 2000  # quicker

By default a scratch database ``pe_bench_<random>`` is created on
``$PE_BENCH_POSTGRES_ADMIN_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``)
and dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from personalization.config import load_config  # noqa: E402
from personalization.serving.publish import publish  # noqa: E402
from personalization.serving.queries import QUERY_DIR  # noqa: E402

SURFACES = ("for_you", "because_you_liked", "trending_in_your_area", "new_for_you")
DATE = "2026-10-05"


def write_datasets(folder: Path, n_users: int, top_n: int, seed: int) -> dict[str, str]:
    """Recommendations (every user x surface x top_n) and insights, as Parquet datasets."""
    rng = np.random.default_rng(seed)
    users = np.array([f"u{i:07d}" for i in range(n_users)])
    per_user = len(SURFACES) * top_n
    rank = np.tile(np.arange(1, top_n + 1), n_users * len(SURFACES))
    # 40 consecutive catalogue positions per user: distinct apps within every page.
    apps = (np.repeat(rng.integers(0, 5000, n_users), per_user) + np.tile(np.arange(per_user), n_users)) % 5000
    recommendations = pa.table({
        "user_id": np.repeat(users, per_user),
        "surface": np.tile(np.repeat(np.array(SURFACES), top_n), n_users),
        "rank": rank,
        "app_id": np.char.add("a", apps.astype(str)),
        "score": 1.0 / rank,
        "reason": np.full(n_users * per_user, "Popular on the store"),
        "reason_app_id": pa.nulls(n_users * per_user, pa.string()),
    })
    insights = pa.table({
        "user_id": users, "segment": np.full(n_users, "casual"), "engagement_score": rng.uniform(0, 100, n_users),
        "churn_risk": rng.uniform(0, 1, n_users), "lifetime_value": rng.uniform(0, 50, n_users),
        "primary_interests": np.full(n_users, '{"games": 1.0}'), "next_best_action": np.full(n_users, "none"),
        "best_notification_hour": rng.integers(0, 24, n_users), "notification_channel": np.full(n_users, "push"),
        "notification_cap_per_week": np.full(n_users, 3),
    })
    paths = {}
    for name, table in (("recommendations", recommendations), ("user_insights", insights)):
        (folder / name).mkdir(parents=True)
        pq.write_table(table, folder / name / "part-00000.parquet", row_group_size=100_000)
        paths[name] = str(folder / name)
    return paths


def reader_loop(url: str, n_users: int, top_n: int, stop: threading.Event, deadline: float, seed: int,
                out: dict[str, Any]) -> None:
    """Fetch random home pages until ``stop``; record (start, latency) and classify every read."""
    import psycopg2

    # The app's query file, with SQLAlchemy's :user_id turned into psycopg2's %(user_id)s.
    lines = (QUERY_DIR / "home_page.sql").read_text().splitlines()
    query = "\n".join(line for line in lines if not line.lstrip().startswith("--")).replace(":user_id", "%(user_id)s")
    rng = random.Random(seed)
    connection = psycopg2.connect(url, connect_timeout=5)
    connection.autocommit = True  # one statement = one snapshot
    expected_shape = [(surface, rank) for surface in SURFACES for rank in range(1, top_n + 1)]
    try:
        with connection.cursor() as cursor:
            while not stop.is_set() and time.monotonic() < deadline:
                user_id = f"u{rng.randrange(n_users):07d}"
                started = time.monotonic()
                try:
                    cursor.execute(query, {"user_id": user_id})
                    rows = cursor.fetchall()
                except Exception as error:  # noqa: BLE001 - every failure is a finding
                    out["errors"].append(f"{type(error).__name__}: {error}"[:300])
                    continue
                latency = time.monotonic() - started
                out["reads"].append((started, latency))
                versions = {row[6] for row in rows}
                if len(versions) != 1 or [(row[0], row[1]) for row in rows] != expected_shape:
                    out["mixed"].append({"user_id": user_id, "versions": sorted(versions), "rows": len(rows)})
                else:
                    version = versions.pop()
                    out["versions"][version] = out["versions"].get(version, 0) + 1
    finally:
        connection.close()


def percentiles(latencies: list[float]) -> dict[str, float | None]:
    if not latencies:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    values = np.array(latencies) * 1000
    return {"p50_ms": round(float(np.percentile(values, 50)), 3), "p99_ms": round(float(np.percentile(values, 99)), 3),
            "max_ms": round(float(values.max()), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--readers", type=int, default=16)
    parser.add_argument("--top-n", type=int, default=10)
    parser.add_argument("--warmup-s", type=float, default=2.0, help="reads before the first publish")
    parser.add_argument("--cooldown-s", type=float, default=2.0, help="reads after the last publish")
    parser.add_argument("--max-s", type=float, default=300.0, help="hard bound on the whole read phase")
    parser.add_argument("--admin-url", default=os.environ.get(
        "PE_BENCH_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--out", default=str(ROOT / "results" / "serving_readers.json"))
    args = parser.parse_args(argv)

    import psycopg2

    database = f"pe_bench_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(args.admin_url, connect_timeout=5)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {database}")
        cursor.execute("SHOW server_version")
        server_version = cursor.fetchone()[0]
    url = args.admin_url.rsplit("/", 1)[0] + f"/{database}"
    try:
        with tempfile.TemporaryDirectory() as scratch:
            root = Path(scratch)
            config = load_config(overrides={
                "paths": {"root": str(root), "lake_root": str(root / "lake"), "var_dir": str(root / "var")},
                "serving": {"url": url, "keep_versions": 3}, "scoring": {"top_n": args.top_n},
            }, environ={})
            worlds = [write_datasets(root / f"w{i}", args.users, args.top_n, seed=i) for i in (1, 2, 3)]
            t0 = time.monotonic()
            first = publish(config, DATE, worlds[0], "m1")
            initial_publish_s = time.monotonic() - t0
            print(f"version 1: {first['row_counts']['recommendations']:,} rows in {initial_publish_s:.1f} s")

            stop = threading.Event()
            deadline = time.monotonic() + args.max_s
            outs = [{"reads": [], "errors": [], "mixed": [], "versions": {}} for _ in range(args.readers)]
            threads = [threading.Thread(target=reader_loop, args=(url, args.users, args.top_n, stop, deadline, i, out))
                       for i, out in enumerate(outs)]
            read_start = time.monotonic()
            for thread in threads:
                thread.start()
            time.sleep(args.warmup_s)
            publishes = []
            for index, tables in enumerate(worlds[1:], start=2):
                begin = time.monotonic()
                result = publish(config, DATE, tables, f"m{index}")
                publishes.append({"version": result["version"], "start": begin, "end": time.monotonic()})
                print(f"version {result['version']} published in {publishes[-1]['end'] - begin:.1f} s under load")
            time.sleep(args.cooldown_s)
            stop.set()
            for thread in threads:
                thread.join()
            read_seconds = time.monotonic() - read_start
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        admin.close()

    reads = [read for out in outs for read in out["reads"]]
    during = [latency for started, latency in reads
              if any(p["start"] <= started <= p["end"] for p in publishes)]
    errors = [error for out in outs for error in out["errors"]]
    mixed = [item for out in outs for item in out["mixed"]]
    report = {
        "benchmark": "serving_readers",
        "database": f"PostgreSQL {server_version} on 127.0.0.1 (loopback)",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "readers": args.readers, "client": "threads, one psycopg2 connection each, autocommit",
        "users": args.users, "rows_per_version": args.users * len(SURFACES) * args.top_n,
        "rows_per_read": len(SURFACES) * args.top_n,
        "initial_publish_s": round(initial_publish_s, 2),
        "publishes_under_load": [{"version": p["version"], "seconds": round(p["end"] - p["start"], 2)}
                                 for p in publishes],
        "read_phase_s": round(read_seconds, 2),
        "reads": len(reads), "reads_per_s": round(len(reads) / read_seconds, 1),
        "errors": len(errors), "error_examples": errors[:5],
        "mixed_version_reads": len(mixed), "mixed_examples": mixed[:5],
        "reads_by_version": {v: sum(out["versions"].get(v, 0) for out in outs)
                             for v in sorted({v for out in outs for v in out["versions"]})},
        "latency": percentiles([latency for _, latency in reads]),
        "latency_during_publish": {**percentiles(during), "reads": len(during)},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("reads", "reads_per_s", "errors", "mixed_version_reads", "reads_by_version", "latency",
                                             "latency_during_publish")}, indent=2))
    print(f"wrote {args.out}")
    return 0 if not errors and not mixed else 1


if __name__ == "__main__":
    sys.exit(main())
