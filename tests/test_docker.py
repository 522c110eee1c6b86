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


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())


def _env(service: dict, project: dict) -> dict:
    """The service's environment after the YAML merge of the shared project block."""
    env = dict(project["environment"])
    env.update(service.get("environment") or {})
    return env


def test_compose_images_exist_and_buckets_are_created() -> None:
    services = _compose()["services"]
    # minio/minio left Docker Hub: a pinned release from the registry that still serves it.
    for name in ("minio", "minio-init"):
        image = services[name]["image"]
        assert image.startswith("quay.io/minio/") and ":RELEASE." in image, image
    for name, service in services.items():
        image = service.get("image", "")
        assert not image.endswith(":latest") or image == "personalization:latest", (name, image)
    init = " ".join(services["minio-init"]["entrypoint"])
    assert "mc mb --ignore-existing lake/lake lake/mlflow-artifacts" in init
    env = _compose()["x-project"]["environment"]
    assert env["PE_PATHS__LAKE_ROOT"].split("/")[2] == "lake"
    assert env["PE_MLFLOW__ARTIFACT_ROOT"] == "s3://mlflow-artifacts"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "healthcheck" in services["minio"]


def test_compose_airflow_components_share_their_keys_and_the_spark_pool_exists() -> None:
    compose = _compose()
    project, services = compose["x-project"], compose["services"]
    airflow = [name for name in services if name.startswith("airflow-") and name != "airflow-db"]
    for name in airflow:
        env = _env(services[name], project)
        # Task tokens are signed by the API server and checked by the others: one secret for all.
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == "${AIRFLOW_JWT_SECRET:?set in .env}", name
        assert env["AIRFLOW__API__SECRET_KEY"] == "${AIRFLOW_API_SECRET_KEY:?set in .env}", name
        assert env["PE_PRIVACY__HMAC_KEY"] == "${PE_HMAC_KEY:?set in .env}", name
    init = " ".join(services["airflow-init"]["entrypoint"])
    assert "airflow db migrate" in init and "airflow pools set spark" in init
    # The pool's name is the one the DAG's Spark tasks ask for.
    from personalization.config import load_config

    assert f"pools set {load_config(environ={}).spark.pool} " in init


def test_compose_mlflow_allows_its_service_host_and_waits_for_healthy_stores() -> None:
    services = _compose()["services"]
    allowed = next(arg for arg in services["mlflow"]["entrypoint"] if arg.startswith("--allowed-hosts="))
    tracking = _compose()["x-project"]["environment"]["PE_MLFLOW__TRACKING_URI"]
    host_port = tracking.split("//", 1)[1]
    assert host_port in allowed.split("=", 1)[1].split(","), (host_port, allowed)
    assert services["mlflow"]["depends_on"]["mlflow-db"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    for database in ("airflow-db", "mlflow-db", "serving-db"):
        assert "pg_isready" in services[database]["healthcheck"]["test"], database


def test_compose_restarts_services_shares_var_and_sets_the_spark_driver_host() -> None:
    compose = _compose()
    project, services = compose["x-project"], compose["services"]
    one_shot = {"airflow-init", "minio-init"}
    for name, service in services.items():
        restart = service.get("restart", project["restart"] if service.get("image") == project["image"] else None)
        assert restart == ("no" if name in one_shot else "unless-stopped"), (name, restart)
    assert "pe-var:/opt/personalization/var" in project["volumes"]
    assert project["environment"]["PE_ROOT"] == "/opt/personalization"
    assert "pe-var" in compose["volumes"]
    scheduler = services["airflow-scheduler"]
    extra = json.loads(_env(scheduler, project)["PE_SPARK__EXTRA"])
    assert extra["spark.driver.host"] == scheduler["hostname"] == "airflow-scheduler"
    assert extra["spark.driver.bindAddress"] == "0.0.0.0"


def test_compose_config_validates_with_a_compose_client(tmp_path: Path) -> None:
    """``docker compose config`` (v2 plugin) or ``docker-compose config`` (v1, Debian's package) accepts the file."""
    import shutil
    import subprocess

    variables = set(re.findall(r"\$\{([A-Z_]+):\?", (ROOT / "docker" / "compose.yaml").read_text()))
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", **{name: f"test-{name.lower()}" for name in variables}}
    compose_file = ROOT / "docker" / "compose.yaml"
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        command = [docker, "compose", "-f", str(compose_file), "config", "--quiet"]
    elif shutil.which("docker-compose"):
        # Compose v1 validates against its own schema, which predates the Compose spec's top-level `name`.
        text = re.sub(r"^name: .*$", "", compose_file.read_text(), flags=re.M)
        compose_file = tmp_path / "compose.yaml"
        compose_file.write_text(text)
        command = [shutil.which("docker-compose"), "-f", str(compose_file), "--project-directory",
                   str(ROOT / "docker"), "config", "--quiet"]
    else:
        import pytest

        pytest.skip("no compose client (apt-get install docker-compose, or Docker's compose plugin)")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    # A missing secret is refused by name, not replaced by an empty string.
    missing = dict(env)
    missing.pop("PE_HMAC_KEY")
    refused = subprocess.run(command, capture_output=True, text=True, env=missing, timeout=120)
    assert refused.returncode != 0 and "PE_HMAC_KEY" in refused.stderr + refused.stdout
