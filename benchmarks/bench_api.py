"""The read API under load: requests/s and latency with 16 concurrent clients on loopback.

For each backend (SQLite, PostgreSQL through a read-only role, and PostgreSQL with
the Redis copy when Redis answers) a scratch serving database gets one published
version (``--users`` users x 4 surfaces x 10 items, plus insights, through the real
publish path), ``pe serve`` starts in its own process, and ``--clients`` threads,
each with its own keep-alive httpx connection, request random users'
``/v1/users/{id}/home`` (every surface: 40 items) and then
``/v1/users/{id}/recommendations?surface=for_you`` for ``--seconds`` each. Every
answer must be HTTP 200 for a scored user. Clients and server share this machine's
cores, so the numbers are a floor for a dedicated server.

Writes ``results/api.json`` and prints a table. Usage::

    .venv/bin/python benchmarks/bench_api.py                      # 20 s per endpoint and backend
    .venv/bin/python benchmarks/bench_api.py --seconds 5 --backends sqlite
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_serving_readers import DATE, percentiles, write_datasets  # noqa: E402
from personalization.api.launch import serve_subprocess  # noqa: E402
from personalization.config import load_config  # noqa: E402
from personalization.serving.publish import publish  # noqa: E402

KEY = f"bench-{uuid.uuid4().hex}"
ENDPOINTS = {"home": "/v1/users/{user}/home", "recommendations": "/v1/users/{user}/recommendations?surface=for_you"}


def load(base: str, path: str, users: int, clients: int, seconds: float, expected_source: str) -> dict[str, Any]:
    """``clients`` threads request ``path`` for random users for ``seconds``; latencies and failures."""
    import httpx

    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures: list[str] = []
    sources: dict[str, int] = {}
    start = threading.Barrier(clients + 1)
    stop_at = [float("inf")]  # set just before the barrier lets every client go

    def client(index: int) -> None:
        rng = random.Random(index)
        with httpx.Client(base_url=base, headers={"X-API-Key": KEY}, timeout=30) as http:
            http.get("/health")  # open the connection before the clock starts
            start.wait()
            while time.monotonic() < stop_at[0]:
                url = path.format(user=f"u{rng.randrange(users):07d}")
                began = time.perf_counter()
                try:
                    response = http.get(url)
                except httpx.HTTPError as error:
                    failures.append(f"{type(error).__name__}: {error}"[:200])
                    continue
                elapsed = time.perf_counter() - began
                if response.status_code != 200:
                    failures.append(f"HTTP {response.status_code}: {response.text[:200]}")
                    continue
                latencies[index].append(elapsed)
                source = response.json()["source"]
                sources[source] = sources.get(source, 0) + 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.monotonic() + seconds + 0.05
    start.wait()
    began = time.monotonic()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - began
    flat = [value for values in latencies for value in values]
    return {
        "requests": len(flat), "seconds": round(wall, 2), "requests_per_s": round(len(flat) / wall, 1),
        **percentiles(flat), "errors": len(failures), "error_examples": failures[:5], "sources": sources,
        "expected_source": expected_source,
    }


def run_backend(name: str, url: str, redis_url: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Publish one version to ``url``, serve it, load each endpoint; the backend's report."""
    role = f"pe_bench_reader_{uuid.uuid4().hex[:8]}" if url.startswith("postgresql") else ""
    prefix = f"pe_bench_{uuid.uuid4().hex[:8]}"
    config = load_config(overrides={
        "paths": {"root": str(root), "lake_root": str(root / "lake"), "var_dir": str(root / "var")},
        "serving": {"url": url, "keep_versions": 1, "reader_role": role, "redis_url": redis_url},
        "scoring": {"top_n": 10},
    }, environ={})
    tables = write_datasets(root / f"world-{name}", args.users, 10, seed=1)
    began = time.monotonic()
    publish(config, DATE, tables, "m1", redis_prefix=prefix)
    publish_s = time.monotonic() - began
    env = {k: v for k, v in os.environ.items() if not k.startswith("PE_")}
    env.update({"PE_ROOT": str(root), "PE_SERVING__URL": url, "PE_SERVING__READER_ROLE": role,
                "PE_SERVING__REDIS_URL": redis_url, "PE_API_KEYS": KEY})
    report: dict[str, Any] = {"backend": name, "publish_s": round(publish_s, 2), "endpoints": {}}
    try:
        with serve_subprocess(env, ["--redis-prefix", prefix], root, cwd=ROOT, timeout_s=90) as base:
            for endpoint, path in ENDPOINTS.items():
                load(base, path, args.users, args.clients, min(2.0, args.seconds), "warm-up")  # caches, pools
                result = load(base, path, args.users, args.clients, args.seconds,
                              "redis" if redis_url else "database")
                report["endpoints"][endpoint] = result
                print(f"{name:16s} {endpoint:16s} {result['requests_per_s']:8.1f} req/s  p50 {result['p50_ms']} ms"
                      f"  p99 {result['p99_ms']} ms  errors {result['errors']}  {result['sources']}", flush=True)
    finally:
        if redis_url:
            import redis

            client = redis.Redis.from_url(redis_url)
            keys = list(client.scan_iter(match=f"{prefix}:*", count=5000))
            for chunk in range(0, len(keys), 5000):
                client.delete(*keys[chunk:chunk + 5000])
            client.close()
        if role:
            import psycopg2

            connection = psycopg2.connect(url)
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f'DROP OWNED BY "{role}"')
                cursor.execute(f'DROP ROLE "{role}"')
            connection.close()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per endpoint and backend")
    parser.add_argument("--backends", default="sqlite,postgres,postgres+redis")
    parser.add_argument("--admin-url", default=os.environ.get(
        "PE_BENCH_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--redis-url", default=os.environ.get("PE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"))
    parser.add_argument("--out", default=str(ROOT / "results" / "api.json"))
    args = parser.parse_args(argv)
    backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    reports, skipped = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in backends:
            root = Path(scratch) / name.replace("+", "_")
            root.mkdir()
            if name == "sqlite":
                reports.append(run_backend(name, f"sqlite:///{root / 'serving.db'}", "", args, root))
                continue
            import psycopg2

            try:
                admin = psycopg2.connect(args.admin_url, connect_timeout=5)
            except psycopg2.OperationalError as error:
                skipped[name] = f"PostgreSQL unreachable: {error}".strip()
                continue
            redis_url = ""
            if name == "postgres+redis":
                import redis

                try:
                    redis.Redis.from_url(args.redis_url, socket_connect_timeout=2).ping()
                except redis.RedisError as error:
                    skipped[name] = f"Redis unreachable: {error}"
                    admin.close()
                    continue
                redis_url = args.redis_url
            admin.autocommit = True
            database = f"pe_bench_api_{uuid.uuid4().hex[:10]}"
            with admin.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {database}")
                cursor.execute("SHOW server_version")
                server_version = cursor.fetchone()[0]
            try:
                url = args.admin_url.rsplit("/", 1)[0] + f"/{database}"
                reports.append({**run_backend(name, url, redis_url, args, root),
                                "database": f"PostgreSQL {server_version} on 127.0.0.1 (loopback)"})
            finally:
                with admin.cursor() as cursor:
                    cursor.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
                admin.close()
    report = {
        "benchmark": "api",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
        "server": "pe serve: one uvicorn process (httptools, uvloop), sync routes in its thread pool, 16 pooled "
                  "database connections",
        "clients": f"{args.clients} threads in one process, one keep-alive httpx connection each, loopback",
        "users": args.users, "items_per_home": 40, "seconds_per_endpoint": args.seconds,
        "backends": reports, "skipped": skipped,
        "total_errors": int(np.sum([e["errors"] for r in reports for e in r["endpoints"].values()])),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 1 if report["total_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
