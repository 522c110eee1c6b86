"""The catalogue as arrays, and the home-page and search surfaces built from it.

Pure functions over numpy arrays and small frames (no I/O), used by
:mod:`models.scoring` block by block:

- :func:`similar_apps`: hybrid content + co-installation neighbours of every app;
- :func:`trending_by_region`: region-level growth with time decay and small-group suppression;
- :func:`because_you_liked`, :func:`fill_from_ranked` (trending, new, featured): per-user lists
  that skip apps already used on another home-page surface for that user;
- :func:`explain_with_history`: the app in the user's history most similar to a recommendation;
- :func:`recommended_categories`, :func:`search_boosts`, :func:`suggested_queries`.

Reason texts (shown to users) are built only here, by the ``reason_*`` helpers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from models import rules

#: Surfaces of the home page, in the order they claim apps (an app appears at most once per user).
HOME_SURFACES = ("for_you", "because_you_liked", "trending_in_your_area", "new_for_you", "featured")
#: Anchors (history apps) and apps per anchor in because_you_liked.
BECAUSE_ANCHORS = 3
BECAUSE_PER_ANCHOR = 4
#: A neighbour must be at least this similar (0..1) to be shown "because you liked" its anchor.
BECAUSE_MIN_SIMILARITY = 0.1
#: Apps released within this many days are "new".
NEW_APP_DAYS = 30
#: Co-installation shrinkage: an app pair with min(installs) = m trusts co-installs with weight m / (m + 20).
COOC_SHRINK = 20.0
#: Weight of the same-category indicator in content similarity (the rest is text cosine).
CATEGORY_SIMILARITY_WEIGHT = 0.5
#: Trending growth ratio is clipped to this range so tiny groups cannot explode.
GROWTH_CLIP = (0.5, 4.0)
RECOMMENDED_CATEGORIES_N = 5
SEARCH_BOOST_CATEGORIES_N = 5
SUGGESTED_QUERIES_N = 5


# ------------------------------------------------------------------ reasons
def reason_because_you_use(app_name: str) -> str:
    return f"Because you use {app_name}"


def reason_because_you_liked(app_name: str) -> str:
    return f"Because you liked {app_name}"


def reason_popular_in(region: str | None) -> str:
    """"Popular in <region>", or the store-wide wording when the region is unknown or not consented."""
    return f"Popular in {region}" if region else "Popular on the store"


def reason_new_in(category: str) -> str:
    return f"New in {category}"


REASON_TRENDING = "Trending in your area"
REASON_FEATURED = "Featured by our editors"
REASON_SIMILAR_USERS = "Popular with people like you"


# ------------------------------------------------------------------ catalogue
@dataclass
class Catalog:
    """The catalogue of the run date as aligned arrays (row ``j`` is ``app_ids[j]``)."""

    app_ids: np.ndarray
    names: np.ndarray
    categories: list[str]
    category: np.ndarray  # int code into ``categories``
    developer: np.ndarray  # int code
    price: np.ndarray  # USD
    age_rating: np.ndarray  # years, NaN unknown
    regions: list[list[str] | None]
    release_day: np.ndarray  # days since 1970-01-01, -1 unknown
    text_unit: np.ndarray | None  # [n, d] unit rows, or None
    allowed: np.ndarray  # bool: not denylisted
    pop_7d: np.ndarray
    pop_30d: np.ndarray
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.index:
            self.index = {app_id: j for j, app_id in enumerate(self.app_ids.tolist())}

    @property
    def n(self) -> int:
        return len(self.app_ids)

    def positions(self, app_ids: Iterable[str]) -> np.ndarray:
        """Catalogue positions of ``app_ids`` (-1 for apps not in the catalogue)."""
        return np.array([self.index.get(app_id, -1) for app_id in app_ids], dtype=np.int64)

    def similarity(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Content similarity in [0, 1] of apps ``left`` x ``right``: category indicator and text cosine."""
        same = (self.category[left][:, None] == self.category[right][None, :]).astype(np.float32)
        if self.text_unit is None:
            return same
        cosine = np.clip(self.text_unit[left] @ self.text_unit[right].T, 0.0, 1.0)
        return CATEGORY_SIMILARITY_WEIGHT * same + (1.0 - CATEGORY_SIMILARITY_WEIGHT) * cosine


def is_new(catalog: Catalog, run_day: dt.date, days: int = NEW_APP_DAYS) -> np.ndarray:
    """``bool [n]``: released within ``days`` days up to and including the run date."""
    today = (run_day - dt.date(1970, 1, 1)).days
    return (catalog.release_day >= 0) & (catalog.release_day <= today) & (catalog.release_day > today - days)


# ------------------------------------------------------------------ similar apps
def similar_apps(
    catalog: Catalog,
    cooccurrence: np.ndarray,
    n: int,
    block: int = 1024,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Top-``n`` similar apps of every app: a hybrid of content similarity and co-installation.

    ``cooccurrence`` is ``[n_apps, n_apps]``: users who installed (positively interacted
    with) both apps; its diagonal is each app's installers. For a pair (i, j):
    ``cooc = C_ij / sqrt(C_ii C_jj)`` (item-item cosine), ``content = catalog.similarity``,
    ``w = m / (m + COOC_SHRINK)`` with ``m = min(C_ii, C_jj)``, and
    ``score = w * cooc + (1 - w) * content`` in [0, 1]. So apps without installs (new apps)
    are matched on content alone. Self-pairs and denylisted targets are excluded.

    Returns ``(frame[app_id, rank, similar_app_id, score], neighbours int [n_apps, k],
    neighbour scores [n_apps, k])`` with ``k = min(n, n_apps - 1)``; -1 pads missing neighbours.
    """
    count = catalog.n
    k = max(0, min(n, count - 1))
    installs = np.diag(cooccurrence).astype(np.float64)
    neighbours = np.full((count, k), -1, dtype=np.int64)
    neighbour_scores = np.zeros((count, k), dtype=np.float32)
    everything = np.arange(count)
    for start in range(0, count, block):
        rows = everything[start:start + block]
        content = catalog.similarity(rows, everything).astype(np.float64)
        denominator = np.sqrt(installs[rows][:, None] * installs[None, :])
        cooc = np.divide(cooccurrence[rows].astype(np.float64), denominator,
                         out=np.zeros((len(rows), count)), where=denominator > 0)
        m = np.minimum(installs[rows][:, None], installs[None, :])
        weight = m / (m + COOC_SHRINK)
        score = weight * cooc + (1.0 - weight) * content
        score[np.arange(len(rows)), rows] = -np.inf
        score[:, ~catalog.allowed] = -np.inf
        if k == 0:
            continue
        top = np.argpartition(-score, k - 1, axis=1)[:, :k]
        # Sort by score, ties by catalogue position, so the output is deterministic.
        top.sort(axis=1)
        top_scores = np.take_along_axis(score, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        top_scores = np.take_along_axis(top_scores, order, axis=1)
        valid = np.isfinite(top_scores) & (top_scores > 0)  # zero similarity is no neighbour
        neighbours[rows] = np.where(valid, top, -1)
        neighbour_scores[rows] = np.where(valid, top_scores, 0.0)
    source, rank = np.nonzero(neighbours >= 0)
    frame = pd.DataFrame({
        "app_id": catalog.app_ids[source],
        "rank": (rank + 1).astype(np.int64),
        "similar_app_id": catalog.app_ids[neighbours[source, rank]],
        "score": neighbour_scores[source, rank].astype(np.float64),
    })
    return frame, neighbours, neighbour_scores


# ------------------------------------------------------------------ trending
def trending_by_region(
    popularity: pd.DataFrame,
    previous: pd.DataFrame | None,
    catalog: Catalog,
    min_group_size: int,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per region, catalogue positions sorted by trending score (descending) and the scores.

    ``popularity``/``previous``: ``region, app_id, score, n_users`` of the run date and of
    an earlier date (``score`` already time-decayed upstream). Rows with fewer than
    ``min_group_size`` distinct users are dropped (small-group suppression, also in the
    baseline). ``trend = score * clip((score + s0) / (score_prev + s0), 0.5, 4)`` with
    ``s0`` the region's median score (smoothing). Without a previous partition the growth
    is the app's store-wide ``(pop_7d / 7) / (pop_30d / 30)``, clipped the same way.
    """
    def kept(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame[frame["n_users"] >= min_group_size]
        return frame.groupby(["region", "app_id"], as_index=False)["score"].sum()

    now = kept(popularity)
    now = now[now["app_id"].isin(catalog.index)]
    if previous is not None and len(previous):
        before = kept(previous).rename(columns={"score": "score_prev"})
        now = now.merge(before, on=["region", "app_id"], how="left")
        now["score_prev"] = now["score_prev"].fillna(0.0)
        smoothing = now.groupby("region")["score"].transform("median")
        growth = (now["score"] + smoothing) / (now["score_prev"] + smoothing)
    else:
        position = catalog.positions(now["app_id"])
        weekly = catalog.pop_7d[position] / 7.0
        monthly = catalog.pop_30d[position] / 30.0
        growth = pd.Series(np.divide(weekly, monthly, out=np.ones(len(now)), where=monthly > 0), index=now.index)
    now = now.assign(trend=now["score"] * growth.clip(*GROWTH_CLIP))
    result: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for region, group in now.groupby("region"):
        group = group.sort_values(["trend", "app_id"], ascending=[False, True])
        result[str(region)] = (catalog.positions(group["app_id"]), group["trend"].to_numpy(dtype=np.float64))
    return result


# ------------------------------------------------------------------ per-user lists
def fill_from_ranked(
    ranked: np.ndarray,
    scores: np.ndarray,
    eligible: np.ndarray,
    used: set[int],
    n: int,
    developer: np.ndarray | None = None,
    max_per_developer: int | None = None,
    min_score: float = -np.inf,
) -> list[tuple[int, float]]:
    """Walk ``ranked`` positions in order, keep eligible unused apps (and the developer cap), up to ``n``.

    Entries scoring below ``min_score`` are skipped.

    Adds the kept apps to ``used`` (so later surfaces skip them). Returns ``[(position, score)]``.
    """
    ranked = np.asarray(ranked, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    # Vectorised pre-filter (lists can be long); only the survivors are walked in Python.
    keep = (ranked >= 0) & (scores >= min_score)
    keep[keep] = eligible[ranked[keep]]
    out: list[tuple[int, float]] = []
    per_developer: dict[int, int] = {}
    for position, score in zip(ranked[keep].tolist(), scores[keep].tolist(), strict=True):
        if len(out) >= n:
            break
        if position in used:
            continue
        if developer is not None and max_per_developer is not None:
            code = int(developer[position])
            if per_developer.get(code, 0) >= max_per_developer:
                continue
            per_developer[code] = per_developer.get(code, 0) + 1
        out.append((position, score))
        used.add(position)
    return out


def because_you_liked(
    history_apps: np.ndarray,
    history_weights: np.ndarray,
    neighbours: np.ndarray,
    neighbour_scores: np.ndarray,
    eligible: np.ndarray,
    used: set[int],
    anchors: int = BECAUSE_ANCHORS,
    per_anchor: int = BECAUSE_PER_ANCHOR,
) -> list[tuple[int, float, int]]:
    """``[(app, score, anchor)]``: for the user's ``anchors`` heaviest history apps, their most
    similar eligible, unused apps (``per_anchor`` each, similarity at least
    :data:`BECAUSE_MIN_SIMILARITY`). Ties in weight go to the lower position."""
    order = np.lexsort((history_apps, -history_weights))
    out: list[tuple[int, float, int]] = []
    for anchor in history_apps[order][:anchors].tolist():
        kept = fill_from_ranked(neighbours[anchor], neighbour_scores[anchor], eligible, used, per_anchor,
                                min_score=BECAUSE_MIN_SIMILARITY)
        out.extend((app, score, anchor) for app, score in kept)
    return out


def explain_with_history(
    catalog: Catalog, recommended: np.ndarray, history_apps: np.ndarray, history_weights: np.ndarray
) -> np.ndarray:
    """For each recommended app, the history app with the highest content similarity.

    Ties go to the heavier history app, then the lower position. Returns positions
    (all in ``history_apps``), or -1 everywhere when the history is empty.
    """
    if len(history_apps) == 0:
        return np.full(len(recommended), -1, dtype=np.int64)
    order = np.lexsort((history_apps, -history_weights))
    history_apps = history_apps[order]
    similarity = catalog.similarity(np.asarray(recommended, dtype=np.int64), history_apps)
    return history_apps[np.argmax(similarity, axis=1)]  # argmax takes the first maximum


def recommended_categories(
    category_weights: np.ndarray, list_categories: Sequence[int], categories: Sequence[str],
    n: int = RECOMMENDED_CATEGORIES_N,
) -> list[tuple[str, float]]:
    """A user's top categories: ``0.5 * interest share + 0.5 * share of the for_you list``.

    ``category_weights`` is the user's interest weights per category (negative parts ignored);
    ``list_categories`` the category codes of the user's for_you apps. Scores in [0, 1].
    """
    interest = np.clip(np.asarray(category_weights, dtype=np.float64), 0.0, None)
    interest = interest / interest.sum() if interest.sum() > 0 else interest
    shown = np.bincount(np.asarray(list_categories, dtype=np.int64), minlength=len(categories)).astype(np.float64)
    shown = shown / shown.sum() if shown.sum() > 0 else shown
    score = 0.5 * interest + 0.5 * shown
    order = np.lexsort((np.arange(len(score)), -score))
    return [(categories[c], round(float(score[c]), 6)) for c in order[:n] if score[c] > 0]


def search_boosts(
    category_weights: np.ndarray, categories: Sequence[str], n: int = SEARCH_BOOST_CATEGORIES_N
) -> list[tuple[str, float]]:
    """Per-user search re-ranking boosts ``1 + interest share`` (in (1, 2]) for the top ``n`` categories."""
    interest = np.clip(np.asarray(category_weights, dtype=np.float64), 0.0, None)
    if interest.sum() <= 0:
        return []
    share = interest / interest.sum()
    order = np.lexsort((np.arange(len(share)), -share))
    return [(categories[c], round(1.0 + float(share[c]), 6)) for c in order[:n] if share[c] > 0]


def popular_queries_by_segment(queries: pd.DataFrame, segment_of_user: np.ndarray, min_users: int,
                               n: int = SUGGESTED_QUERIES_N * 2) -> dict[object, list[str]]:
    """Each segment's queries searched by at least ``min_users`` distinct users, most users first.

    The k-anonymity floor keeps one person's rare query from being suggested to others.
    """
    if queries.empty:
        return {}
    frame = queries.assign(segment=segment_of_user[queries["user_pos"].to_numpy()])
    frame = frame[frame["segment"].notna()]
    users = frame.groupby(["segment", "query"])["user_pos"].nunique().rename("users").reset_index()
    users = users[users["users"] >= min_users].sort_values(["segment", "users", "query"],
                                                            ascending=[True, False, True])
    return {segment: group["query"].head(n).tolist() for segment, group in users.groupby("segment")}


def order_queries(queries: pd.DataFrame) -> pd.DataFrame:
    """Search history sorted by user, then most searched, most recent, alphabetical (once per run)."""
    return queries.sort_values(["user_pos", "count", "last_day", "query"],
                               ascending=[True, False, False, True], kind="stable").reset_index(drop=True)


def suggested_queries(own: Sequence[str], segment_popular: Sequence[str], n: int = SUGGESTED_QUERIES_N) -> list[str]:
    """The user's own queries (already ordered by :func:`order_queries`) topped up with the
    segment's popular ones, without repeats, up to ``n``."""
    out: list[str] = []
    for query in [*own, *segment_popular]:
        if len(out) >= n:
            break
        if query not in out:
            out.append(query)
    return out


def diversity_similarity(catalog: Catalog, candidates: np.ndarray) -> np.ndarray:
    """``[b, p, p]`` content similarity of each user's candidate pool (MMR input, see :mod:`models.rules`)."""
    text = None if catalog.text_unit is None else catalog.text_unit[candidates]
    return rules.pairwise_similarity(catalog.category[candidates], text, CATEGORY_SIMILARITY_WEIGHT)
