"""The Docker image installs exactly what ``make install`` installs; the Compose stack is well formed.

No Docker engine runs on the development machines, so the image is never built
here: these checks read the files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _constraint(name: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{name} is not pinned in constraints.txt")


def _pip_installs(text: str) -> list[str]:
    """The arguments of every ``python -m pip install`` in a Makefile or Dockerfile, normalised."""
    text = text.replace("\\\n", " ")
    installs = []
    for match in re.finditer(r"python -m pip install ([^\n&]*)", text):
        words = [w.strip('"') for w in match.group(1).split()
                 if w not in ("--quiet", "--no-cache-dir") and not w.startswith("--extra-index-url")
                 and not w.startswith("https://")]
        installs.append(" ".join(words))
    return installs


def test_image_install_steps_match_the_makefile() -> None:
    make = _pip_installs((ROOT / "Makefile").read_text())
    docker = _pip_installs((ROOT / "docker" / "Dockerfile").read_text())
    torch = _constraint("torch")
    # Same order: tools, the pinned CPU torch, then the project, all under the same constraints file.
    assert make[0] == docker[0] == '--upgrade pip>=24 wheel setuptools>=68'
    assert make[1] == docker[1] == f"-c constraints.txt torch=={torch}"
    assert make[2] == "-c constraints.txt -e .[dev]"  # the image leaves out the dev tools
    assert docker[2] == "-c constraints.txt -e ."
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "COPY setup.cfg pyproject.toml constraints.txt" in dockerfile
    assert re.search(r"^FROM python:3\.11", dockerfile, re.M)


def test_compose_declares_the_production_like_stack() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    for name in ("airflow-db", "airflow-init", "airflow-api-server", "airflow-scheduler", "airflow-dag-processor",
                 "airflow-triggerer", "minio", "mlflow", "spark-master", "spark-worker", "serving-db", "redis"):
        assert name in services, name
    project = compose["x-project"]
    env = project["environment"]
    assert env["PE_PATHS__LAKE_ROOT"].startswith("s3://")
    assert env["PE_MLFLOW__ARTIFACT_ROOT"].startswith("s3://")
    assert env["PE_SPARK__SUBMIT_CONN_ID"] == "spark_cluster"
    spark_connection = json.loads(env["AIRFLOW_CONN_SPARK_CLUSTER"])
    assert (spark_connection["conn_type"], spark_connection["host"]) == ("spark", "spark://spark-master")
    assert project["build"]["dockerfile"] == "docker/Dockerfile"
    # Every ${VAR} is required from .env: no password has a default in the file.
    text = (ROOT / "docker" / "compose.yaml").read_text()
    assert not re.search(r"\$\{[A-Z_]*PASSWORD[A-Z_]*:-", text)
    # Every depends_on names a service of the file.
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert set(depends) <= set(services), (name, depends)
