"""MLflow's side of data rights: purge users from logged Recommenders, search artifacts, retention.

A logged model (``models.tracking.log_recommender``) is a pyfunc whose artifact
``artifacts/recommender.pkl`` is the pickled :class:`models.base.Recommender`;
registered versions point at those logged models (MLflow 3 does not copy them).
Deletion therefore walks the artifact files themselves:

- every ``.pkl`` that unpickles to a Recommender holding a deleted user is loaded,
  ``drop_users`` is called and it is re-pickled in place (atomic replace). A model
  that keeps the default ``drop_users`` has no per-user parameters by contract, so
  its ``user_ids`` list is filtered directly;
- JSON artifacts (the input examples MLflow saves) have the requested ids replaced
  where they are the value of a ``user_id`` field (a ``user_id`` key, or the
  ``user_id`` column of a split-oriented frame: ``{"columns": [...], "data": [...]}``).
  Nothing is replaced by text matching: an app id, an event type or any other value
  that happens to equal a requested id stays as it is, and no other file is rewritten;
- the Lightning checkpoints (``checkpoint/*.ckpt``) of runs whose model held a
  deleted user are deleted: they hold the same per-user rows, addressed by
  position, and nothing reads them back (warm starts load the pickles);
- any other file that still contains an id afterwards is reported in
  ``needs_retraining``.

Unpickling runs code from the file: only this project's own artifact store is
read, the same trust ``mlflow.pyfunc.load_model`` already places in it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import pickle
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np

from jobs import columns as C
from personalization import storage
from personalization.config import Config
from personalization.data_rights import files
from personalization.data_rights.ids import REDACTED, IdMatcher
from personalization.data_rights.lake_store import scan_bytes

log = logging.getLogger(__name__)

#: Artifact files whose ``user_id`` fields are rewritten in place (the input examples MLflow saves).
JSON_ARTIFACTS = (".json",)
CHECKPOINT_SUFFIX = ".ckpt"
_RUN_DIR = re.compile(r"/([0-9a-f]{32})/artifacts(?:/|$)")
_PAGE = 1000


# ------------------------------------------------------------------- plumbing
def tracking_available(config: Config) -> bool:
    """False when the tracking store is a SQLite file that does not exist (never create one)."""
    uri = config.mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        return os.path.exists(uri[len("sqlite:///"):])
    return True


def _client(config: Config) -> Any:
    from mlflow.tracking import MlflowClient

    uri = config.mlflow_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _pages(fetch: Any) -> Iterator[Any]:
    """Every item of a paged MLflow search; ``fetch(page_token)`` returns a PagedList."""
    token = None
    while True:
        page = fetch(token)
        yield from page
        token = getattr(page, "token", None)
        if not token:
            return


def _all_versions(client: Any) -> list[Any]:
    return list(_pages(lambda token: client.search_model_versions(max_results=_PAGE, page_token=token)))


def _experiment_ids(client: Any) -> list[str]:
    from mlflow.entities import ViewType

    return [e.experiment_id for e in _pages(
        lambda token: client.search_experiments(view_type=ViewType.ALL, max_results=_PAGE, page_token=token))]


def _logged_models(client: Any, experiment_ids: list[str]) -> list[Any]:
    if not experiment_ids:
        return []
    return list(_pages(lambda token: client.search_logged_models(
        experiment_ids=experiment_ids, max_results=100, page_token=token)))


def _version_model_id(version: Any) -> str | None:
    """The logged model a registered version points at (``models:/m-...`` source)."""
    model_id = getattr(version, "model_id", None)
    if model_id:
        return str(model_id)
    source = str(version.source or "")
    if source.startswith("models:/m-"):
        return source[len("models:/"):].split("/", 1)[0]
    return None


def _norm(location: str) -> str:
    return files.to_location(location).rstrip("/")


class _Catalogue:
    """What the tracking store knows: logged models, registered versions, and their artifact folders."""

    def __init__(self, config: Config):
        self.client = _client(config) if tracking_available(config) else None
        self.logged: list[Any] = []
        self.versions: list[Any] = []
        self.roots = [_norm(config.mlflow_artifact_root)]
        if self.client is None:
            return
        experiment_ids = _experiment_ids(self.client)
        self.logged = _logged_models(self.client, experiment_ids)
        self.versions = _all_versions(self.client)
        experiment = self.client.get_experiment_by_name(config.mlflow.experiment)
        candidates = [experiment.artifact_location] if experiment is not None else []
        candidates += [model.artifact_location for model in self.logged]
        for location in candidates:
            location = _norm(location)
            if "://" in location and not storage.is_s3(location):
                continue  # mlflow-artifacts:/ and other proxied stores are not reachable as files
            if not any(location == root or location.startswith(root + "/") for root in self.roots):
                self.roots.append(location)

    def files(self) -> Iterator[str]:
        for root in self.roots:
            yield from files.list_files(root)

    def owner(self, uri: str) -> dict[str, Any]:
        """The logged model, run and registered versions an artifact file belongs to."""
        model = next((m for m in self.logged
                      if uri.startswith(_norm(m.artifact_location) + "/")), None)
        run_id = model.source_run_id if model is not None else None
        if run_id is None:
            match = _RUN_DIR.search(uri)
            run_id = match.group(1) if match else None
        versions = []
        for version in self.versions:
            if model is not None and _version_model_id(version) == model.model_id:
                versions.append(f"{version.name}/{version.version}")
            elif model is None and run_id and version.run_id == run_id and str(version.source).startswith("runs:/"):
                versions.append(f"{version.name}/{version.version}")
        return {"logged_model": model.model_id if model is not None else None, "run_id": run_id,
                "model_versions": versions}


# -------------------------------------------------------------------- purging
def _load_recommender(path: str) -> Any | None:
    """The Recommender pickled in ``path``, or None for any other file."""
    from models.base import Recommender

    with open(path, "rb") as handle:
        if handle.read(1) != b"\x80":  # every pickle protocol >= 2 starts with PROTO
            return None
        handle.seek(0)
        try:
            obj = pickle.load(handle)
        except Exception as error:  # noqa: BLE001 - not ours or not loadable: the byte scan decides
            log.warning("privacy: %s is a pickle but could not be loaded (%s)", path, error)
            return None
    return obj if isinstance(obj, Recommender) else None


def _models(recommender: Any) -> Iterator[Any]:
    """The recommender and every model nested in it (an ensemble's ``components``), depth first."""
    yield recommender
    for component in getattr(recommender, "components", None) or ():
        yield from _models(component)


def _drop(recommender: Any, ids: frozenset[str]) -> tuple[int, set[str]]:
    """Remove the ids from a Recommender and its components; returns (rows removed, ids it held)."""
    from models.base import Recommender

    def seen(model: Any) -> set[str]:
        users = getattr(model, "user_ids", None)
        return set() if users is None else ids & {str(user) for user in np.asarray(users).tolist()}

    held = set().union(*(seen(model) for model in _models(recommender)))
    if not held:
        return 0, held
    removed = int(recommender.drop_users(sorted(held)))
    for model in _models(recommender):
        if seen(model) and type(model).drop_users is Recommender.drop_users:
            # By the interface such a model has no per-user parameters: user_ids only
            # records who was seen in training, so filtering it forgets them completely.
            # An ensemble's drop_users reaches its components, but not this list of theirs.
            users = np.asarray(model.user_ids)
            keep = np.array([str(user) not in ids for user in users.tolist()], dtype=bool)
            model.user_ids = users[keep]
            removed += int((~keep).sum())
    return removed, held


def _redact_user_fields(document: Any, matcher: IdMatcher) -> tuple[Any, set[str]]:
    """``document`` (parsed JSON) with requested ids replaced where they are ``user_id`` values; and their owners."""
    found: set[str] = set()

    def swap(value: Any) -> Any:
        if isinstance(value, str) and value in matcher.ids:
            found.add(matcher.owner_of[value])
            return REDACTED
        if isinstance(value, list):
            return [swap(item) for item in value]
        if isinstance(value, dict):  # pandas "columns" orientation: {"user_id": {"0": id, ...}}
            return {key: swap(item) for key, item in value.items()}
        return value

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        columns = node.get("columns")
        position = columns.index(C.USER_ID) if isinstance(columns, list) and C.USER_ID in columns else None
        out = {}
        for key, item in node.items():
            if key == C.USER_ID:
                out[key] = swap(item)
            elif key == "data" and position is not None and isinstance(item, list):
                out[key] = [[swap(cell) if index == position else cell for index, cell in enumerate(row)]
                            if isinstance(row, list) else walk(row) for row in item]
            else:
                out[key] = walk(item)
        return out

    return walk(document), found


def _purge_json_artifact(uri: str, path: str, matcher: IdMatcher, dry_run: bool) -> set[str]:
    """Rewrite a JSON artifact's ``user_id`` values (not its other text); returns the owners found."""
    try:
        with open(path, "rb") as handle:
            document = json.loads(handle.read())
    except (ValueError, RecursionError):
        return set()  # not JSON: attributed by nobody, reported by the search if an id occurs in it
    redacted, found = _redact_user_fields(document, matcher)
    if found and not dry_run:
        with files.replacement(uri) as tmp, open(tmp, "w", encoding="utf-8") as handle:
            json.dump(redacted, handle)
    return found


def purge_models(config: Config, matcher: IdMatcher, *, dry_run: bool = False) -> dict[str, Any]:
    """Purge the ids from every artifact under the MLflow artifact stores (see the module docstring).

    With ``dry_run`` nothing is written or deleted; the result lists what would be.
    """
    catalogue = _Catalogue(config)
    by_user: Counter = Counter()
    purged: list[dict[str, Any]] = []
    redacted: list[str] = []
    needs_retraining: list[str] = []
    binary_hits: list[str] = []
    for uri in list(catalogue.files()):
        name = files.name_of(uri)
        with files.local_copy(uri) as path:
            recommender = _load_recommender(path) if name.endswith(".pkl") else None
            if recommender is not None:
                removed, held = _drop(recommender, matcher.ids)
                if held:
                    if not dry_run:
                        with files.replacement(uri) as tmp, open(tmp, "wb") as handle:
                            pickle.dump(recommender, handle, protocol=pickle.HIGHEST_PROTOCOL)
                    by_user.update(matcher.owners(held))  # the model may know the user by the pseudonym
                    purged.append({"artifact": uri, "model": getattr(recommender, "name", type(recommender).__name__),
                                   "rows_removed": removed, **catalogue.owner(uri)})
                if not dry_run:
                    with files.local_copy(uri) as current:
                        if scan_bytes(current, matcher):
                            needs_retraining.append(uri)
                continue
            if name.lower().endswith(JSON_ARTIFACTS):
                found = _purge_json_artifact(uri, path, matcher, dry_run)
                if found:
                    by_user.update(found)
                    redacted.append(uri)
                    continue
            if scan_bytes(path, matcher):
                binary_hits.append(uri)  # an id token that no field attributes: reported, never rewritten
    runs = {item["run_id"] for item in purged if item["run_id"]}
    checkpoints = _delete_checkpoints(catalogue, runs, dry_run)
    needs_retraining += [uri for uri in binary_hits if uri not in checkpoints]
    return {
        "artifacts": len(purged) + len(redacted),
        "by_user": dict(sorted(by_user.items())),
        "purged_models": purged,
        "model_versions": sorted({v for item in purged for v in item["model_versions"]}),
        "runs": sorted(runs),
        "redacted": redacted,
        "checkpoints_deleted": checkpoints,
        "needs_retraining": needs_retraining,
        "tracking_store": catalogue.client is not None,
    }


def _delete_checkpoints(catalogue: _Catalogue, run_ids: set[str], dry_run: bool = False) -> list[str]:
    """Delete ``checkpoint/*.ckpt`` run artifacts of the affected runs; returns what was (or would be) deleted."""
    deleted: list[str] = []
    if catalogue.client is None:
        return deleted
    for run_id in sorted(run_ids):
        folder = _norm(catalogue.client.get_run(run_id).info.artifact_uri) + "/checkpoint"
        for uri in files.list_files(folder):
            if uri.endswith(CHECKPOINT_SUFFIX):
                if not dry_run:
                    files.delete_file(uri)
                deleted.append(uri)
    return deleted


def scan_models(config: Config, matcher: IdMatcher) -> dict[str, Any]:
    """Artifact files per id whose bytes contain a deleted id (UTF-8 or UTF-32 tokens)."""
    catalogue = _Catalogue(config)
    by_user: Counter = Counter()
    hits: list[str] = []
    for uri in catalogue.files():
        with files.local_copy(uri) as path:
            found = scan_bytes(path, matcher)
        if found:
            by_user.update(found)
            hits.append(uri)
    return {"by_user": by_user, "files": hits}


# ------------------------------------------------------------------ retention
def apply_model_retention(config: Config, cutoff: dt.datetime) -> dict[str, Any]:
    """Delete registered versions and logged models created before ``cutoff`` (UTC).

    Aliased versions (the champion first of all) are kept whatever their age. A
    logged model's artifacts are deleted with it unless a kept version still uses it.
    """
    if not tracking_available(config):
        return {"skipped": "no MLflow tracking store", "model_versions_deleted": [], "logged_models_deleted": []}
    client = _client(config)
    cutoff_ms = int(cutoff.timestamp() * 1000)
    aliased: set[tuple[str, str]] = set()
    for name in {version.name for version in _all_versions(client)}:
        for version in client.get_registered_model(name).aliases.values():
            aliased.add((name, str(version)))
    deleted_versions: list[str] = []
    kept_versions: list[str] = []
    in_use: set[str] = set()
    for version in _all_versions(client):
        key = (version.name, str(version.version))
        old = int(version.creation_timestamp) < cutoff_ms
        if old and key not in aliased:
            client.delete_model_version(version.name, str(version.version))
            deleted_versions.append(f"{version.name}/{version.version}")
            continue
        if old:
            kept_versions.append(f"{version.name}/{version.version}")
        model_id = _version_model_id(version)
        if model_id:
            in_use.add(model_id)
    deleted_models: list[str] = []
    for model in _logged_models(client, _experiment_ids(client)):
        if int(model.creation_timestamp) >= cutoff_ms or model.model_id in in_use:
            continue
        location = _norm(model.artifact_location)
        if "://" not in location or storage.is_s3(location):
            storage.delete_prefix(location)
        client.delete_logged_model(model.model_id)
        deleted_models.append(model.model_id)
    return {"model_versions_deleted": deleted_versions, "aliased_versions_kept": kept_versions,
            "logged_models_deleted": deleted_models}
