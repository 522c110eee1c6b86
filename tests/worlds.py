"""The end-to-end tests' shared ``tiny`` world and the CLI route that builds it.

One fresh world per test session is generated and run by ``pe run`` as a separate
process, exactly as a new user would (generate, ingest the earlier landing dates,
the nightly DAG through Airflow for the last date). Tests that only read it use it
in place (the ``tiny_world`` fixture in conftest.py); a test that writes works on a
copy (``copy_world``), so no test sees another's changes.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

#: Seconds one ``pe`` command of the tests may take (a fresh world's run on a loaded 2-core machine).
CLI_TIMEOUT_S = 1500


def cli_env(root: Path) -> dict[str, str]:
    """The environment of a ``pe`` command on the world under ``root`` (tiny scale, no config file)."""
    env = dict(os.environ)
    env.update(PE_ROOT=str(root), PE_GENERATOR__SCALE="tiny")
    env.pop("PE_CONFIG", None)
    return env


def run_cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``pe <args>`` as its own process on the world under ``root``; fail the test on a non-zero exit."""
    completed = subprocess.run(
        [sys.executable, "-m", "personalization.cli", *args], cwd=root, env=cli_env(root),
        capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
    )
    assert completed.returncode == 0, (args, completed.stdout[-4000:], completed.stderr[-6000:])
    return completed


@dataclass(frozen=True)
class World:
    """A world root (``PE_ROOT``): the lake under ``var/lake``, MLflow, serving DB and Airflow under ``var``."""

    root: Path
    #: The first ``pe run``'s completed process (its stdout holds the summary).
    first_run: subprocess.CompletedProcess
    #: The generator's manifest (``first_date``, ``last_date``, sizes).
    manifest: dict

    @property
    def lake(self) -> Path:
        return self.root / "var" / "lake"

    @property
    def serving_db(self) -> Path:
        return self.root / "var" / "serving.db"

    @property
    def last_date(self) -> str:
        return self.manifest["last_date"]


def build_world(root: Path) -> World:
    """Generate the tiny world under ``root`` and run the nightly pipeline for its last date with ``pe run``."""
    completed = run_cli(root, "run")
    manifest = json.loads((root / "var" / "lake" / "raw" / "_manifests" / "world.json").read_text())
    return World(root=root, first_run=completed, manifest=manifest)


def copy_world(world: World, target: Path) -> World:
    """A private copy of ``world`` under ``target`` that a test may change.

    Besides the files, the absolute paths the stores keep (MLflow's artifact locations
    in its SQLite database) are moved to the copy, so new runs, models and artifacts
    land under ``target`` and the shared world stays as it was.
    """
    shutil.copytree(world.root, target, symlinks=True, dirs_exist_ok=True)
    old, new = str(world.root), str(target)
    for database in (target / "var").rglob("*.db"):
        _replace_text(database, old, new)
    return World(root=target, first_run=world.first_run, manifest=world.manifest)


def _replace_text(database: Path, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` in every text value of every table of a SQLite database."""
    with sqlite3.connect(database) as connection:
        tables = [name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for column in [row[1] for row in connection.execute(f'PRAGMA table_info("{table}")')]:
                connection.execute(
                    f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                    f'WHERE typeof("{column}") = \'text\' AND instr("{column}", ?) > 0', (old, new, old))
