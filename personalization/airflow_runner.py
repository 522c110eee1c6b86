"""Run the Airflow DAGs of this project with its own ``AIRFLOW_HOME`` (SQLite metadata DB).

``make run`` uses :func:`run_dag_in_process`: it prepares the metadata DB once and
runs ``dag.test()`` for one date in a child process whose environment points
Airflow at ``var/airflow`` and at this repository's ``dags/`` folder. The same
environment serves the real scheduler (``pe airflow-env``, then ``pe airflow-setup``
and ``airflow standalone``, see :func:`setup_airflow`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from personalization.config import Config
from personalization.lake import check_date

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def default_parallelism() -> int:
    """Task slots of the LocalExecutor: one per core, at least 2.

    With ``fork`` the LocalExecutor starts all of its workers at once (~130 MB each);
    Airflow's default of 32 is far more than a laptop's Spark and torch tasks can use.
    """
    return max(2, os.cpu_count() or 2)


def venv_bin() -> Path:
    """The folder of this interpreter's scripts (``.venv/bin``: ``airflow``, ``pe``, ``spark-submit``)."""
    # Not resolved: the venv's python is a symlink to the base interpreter, whose folder has no airflow.
    return Path(sys.executable).parent


def airflow_environment(config: Config) -> dict[str, str]:
    """Environment variables that point Airflow at this project (no secrets).

    ``PATH`` starts with :func:`venv_bin` because ``airflow standalone`` starts its
    components by the bare name ``airflow``.
    """
    home = Path(config.airflow_home)
    parallelism = str(default_parallelism())
    path = os.environ.get("PATH", "")
    bin_dir = str(venv_bin())
    if path.split(os.pathsep)[0] != bin_dir:
        path = os.pathsep.join([bin_dir, path]) if path else bin_dir
    env = {
        "PATH": path,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__CORE__PARALLELISM": parallelism,
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": parallelism,
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "PE_ROOT": str(config.root),
    }
    return env


def _child_env(config: Config) -> dict[str, str]:
    env = dict(os.environ)
    env.update(airflow_environment(config))
    return env


def _airflow_command(*args: str) -> list[str]:
    airflow_bin = venv_bin() / "airflow"
    return [str(airflow_bin), *args] if airflow_bin.exists() else [sys.executable, "-m", "airflow", *args]


def ensure_airflow_db(config: Config) -> None:
    """Create or upgrade the SQLite metadata DB (``airflow db migrate``); quick when current."""
    home = Path(config.airflow_home)
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run(_airflow_command("db", "migrate"), env=_child_env(config), check=True, stdout=subprocess.DEVNULL)


def setup_airflow(config: Config) -> dict[str, str]:
    """What the real scheduler needs before its first run: the metadata DB and the Spark pool.

    The Spark tasks run in the pool ``spark.pool``; a pool that does not exist leaves them
    ``scheduled`` forever (a scheduler warning only), so it is created here (1 slot: one
    Spark job at a time) unless it exists, whose slots are then kept. Idempotent.
    """
    ensure_airflow_db(config)
    command = [sys.executable, "-m", "personalization.airflow_runner", "--setup"]
    subprocess.run(command, env=_child_env(config), check=True)
    return {"airflow_home": config.airflow_home, "pool": config.spark.pool,
            "database": airflow_environment(config)["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]}


def run_dag_in_process(config: Config, date: str, dag_id: str = "personalization_nightly") -> None:
    """Run ``dag_id`` for ``date`` with ``dag.test()``; raises CalledProcessError when the run fails."""
    date = check_date(date)
    ensure_airflow_db(config)
    command = [sys.executable, "-m", "personalization.airflow_runner", dag_id, date]
    subprocess.run(command, env=_child_env(config), check=True)


def backfill_in_process(config: Config, dates: list[str], dag_id: str = "personalization_nightly") -> None:
    """Run ``dag_id`` once per date, oldest first, as a backfill does: no params, the date is the logical date.

    One child process runs every date (one Airflow import, one Spark session), each with
    ``dag.test()``; raises CalledProcessError at the first failed run.
    """
    dates = sorted(check_date(date) for date in dates)
    ensure_airflow_db(config)
    command = [sys.executable, "-m", "personalization.airflow_runner", "--backfill", dag_id, *dates]
    subprocess.run(command, env=_child_env(config), check=True)


def ensure_spark_pool(slots: int = 1) -> None:
    """Create the Spark pool (``spark.pool``) when missing, as ``airflow pools set`` would; runs in an
    Airflow-configured process (the metadata DB of ``AIRFLOW_HOME``)."""
    from airflow.models.pool import Pool

    from personalization.config import load_config

    name = load_config().spark.pool
    if name and name != Pool.DEFAULT_POOL_NAME and Pool.get_pool(name) is None:
        Pool.create_or_update_pool(name, slots=slots, description="Concurrent Spark jobs of the personalization DAGs",
                                   include_deferred=False)


def require_landing_data(config: Config, date: str) -> None:
    """Fail the task, without retries, when no raw events landed for ``date``.

    Raises:
        AirflowFailException: naming the missing partition and the landing dates the lake holds.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from personalization.lake import Lake
    from personalization.pipeline import landing_dates
    from personalization.storage import exists

    path = Lake(config).raw_events(date)
    if exists(path):
        return
    landed = landing_dates(config)
    held = f"{landed[0]} .. {landed[-1]} ({len(landed)} dates)" if landed else "none"
    hint = f'trigger a run with {{"date": "{landed[-1]}"}} for the newest one' if landed else "generate or land data first"
    raise AirflowFailException(
        f"no raw events landed for {date} ({path}); landing dates in the lake: {held}. "
        f"A run processes a landed date: {hint}. Not retried: retrying cannot make the data land."
    )


def _main(dag_id: str, *dates: str, backfill: bool = False) -> int:
    """Child-process entry: load the DAG from the dags folder and test-run it for each date."""
    import datetime as dt

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        for path, error in bag.import_errors.items():
            print(f"DAG import error in {path}:\n{error}", file=sys.stderr)
        return 2
    dag = bag.get_dag(dag_id)
    if dag is None:
        print(f"no DAG named {dag_id!r} in {os.environ['AIRFLOW__CORE__DAGS_FOLDER']}", file=sys.stderr)
        return 2
    # An interactive test run fails fast: the scheduler's retries (with minutes of delay)
    # would make `make run` hang on a real error instead of reporting it.
    for operator in dag.tasks:
        operator.retries = 0
    ensure_spark_pool()
    for date in dates:
        logical = dt.datetime.fromisoformat(check_date(date)).replace(tzinfo=dt.timezone.utc)
        # A backfill run carries no conf: the tasks take the date from the logical date.
        dag_run = dag.test(logical_date=logical, run_conf=None if backfill else {"date": date})
        state = str(getattr(dag_run, "state", "unknown"))
        print(f"DAG {dag_id} for {date}: {state}")
        if not state.endswith("success"):
            return 1
    return 0


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if arguments == ["--setup"]:
        ensure_spark_pool()
        sys.exit(0)
    is_backfill = arguments[0] == "--backfill"
    sys.exit(_main(*arguments[int(is_backfill):], backfill=is_backfill))
