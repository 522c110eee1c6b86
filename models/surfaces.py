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

    Entries scoring below ``min_score`` are skipped. One user's form of :func:`fill_ranked_block`.

    Adds the kept apps to ``used`` (so later surfaces skip them). Returns ``[(position, score)]``.
    """
    blocked = ~np.asarray(eligible, dtype=bool)[None, :]
    blocked[0, list(used)] = True
    picks, kept = fill_ranked_block(np.asarray(ranked)[None, :], np.asarray(scores)[None, :], blocked, n,
                                    developer, max_per_developer, min_score)
    valid = picks[0] >= 0
    out = list(zip(picks[0, valid].tolist(), kept[0, valid].tolist(), strict=True))
    used.update(position for position, _ in out)
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
    :data:`BECAUSE_MIN_SIMILARITY`). Ties in weight go to the lower position.
    One user's form of :func:`because_you_liked_block`."""
    history_apps = np.asarray(history_apps, dtype=np.int64)
    apps, _ = sorted_histories(np.array([0, len(history_apps)]), history_apps, history_weights)
    blocked = ~np.asarray(eligible, dtype=bool)[None, :]
    blocked[0, list(used)] = True
    picks, kept, anchor = because_you_liked_block(apps, neighbours, neighbour_scores, blocked, anchors, per_anchor)
    valid = picks[0] >= 0
    used.update(picks[0, valid].tolist())
    return list(zip(picks[0, valid].tolist(), kept[0, valid].tolist(), anchor[0, valid].tolist(), strict=True))


def explain_with_history(
    catalog: Catalog, recommended: np.ndarray, history_apps: np.ndarray, history_weights: np.ndarray
) -> np.ndarray:
    """For each recommended app, the history app with the highest content similarity.

    Ties go to the heavier history app, then the lower position. Returns positions
    (all in ``history_apps``), or -1 everywhere when the history is empty.
    One user's form of :func:`explain_block`.
    """
    history_apps = np.asarray(history_apps, dtype=np.int64)
    apps, _ = sorted_histories(np.array([0, len(history_apps)]), history_apps, history_weights)
    return explain_block(catalog, np.asarray(recommended, dtype=np.int64)[None, :], apps)[0]


def recommended_categories(
    category_weights: np.ndarray, list_categories: Sequence[int], categories: Sequence[str],
    n: int = RECOMMENDED_CATEGORIES_N,
) -> list[tuple[str, float]]:
    """A user's top categories: ``0.5 * interest share + 0.5 * share of the for_you list``.

    ``category_weights`` is the user's interest weights per category (negative parts ignored);
    ``list_categories`` the category codes of the user's for_you apps. Scores in [0, 1], rounded
    to 6 decimals. One user's form of :func:`recommended_categories_block`.
    """
    codes, scores = recommended_categories_block(np.asarray(category_weights)[None, :],
                                                 np.asarray(list_categories, dtype=np.int64)[None, :],
                                                 len(categories), n)
    return [(categories[c], round(float(v), 6)) for c, v in zip(codes[0], scores[0], strict=True) if c >= 0]


def search_boosts(
    category_weights: np.ndarray, categories: Sequence[str], n: int = SEARCH_BOOST_CATEGORIES_N
) -> list[tuple[str, float]]:
    """Per-user search re-ranking boosts ``1 + interest share`` (in (1, 2]) for the top ``n`` categories."""
    codes, boosts = search_boosts_block(np.asarray(category_weights)[None, :], n)
    return [(categories[c], round(float(v), 6)) for c, v in zip(codes[0], boosts[0], strict=True) if c >= 0]


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


# ------------------------------------------------------------------ whole blocks of users
# The functions below are the block-vectorised forms of the per-user ones above (same
# rules, same tie-breaking), used by batch scoring: one numpy step per list position
# over all users of a block instead of one Python call per user.
def fill_ranked_block(
    ranked: np.ndarray,
    scores: np.ndarray,
    blocked: np.ndarray,
    n: int,
    developer: np.ndarray | None = None,
    max_per_developer: int | None = None,
    min_score: float = -np.inf,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Walk each user's ranked positions in order and keep allowed apps (and the developer cap), up to ``n``.

    Args:
        ranked: ``int [b, L]`` catalogue positions per user in walking order, ``-1`` padding.
        scores: ``float [b, L]`` aligned with ``ranked``; entries below ``min_score`` (or NaN) are skipped.
        blocked: ``bool [B, n_apps]``, True where an app may not be added (ineligible, or already on
            another surface of that user); kept apps are set True here, so later surfaces skip them.
        n: list length wanted.
        rows: ``int [b]`` row of ``blocked`` for each list (default: row ``i`` for list ``i``).

    Returns ``(positions int [b, n], scores float64 [b, n])``, ``-1``/0 padding at the end.
    """
    ranked = np.asarray(ranked, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    b, length = ranked.shape
    target = np.arange(b) if rows is None else np.asarray(rows, dtype=np.int64)
    picks = np.full((b, n), -1, dtype=np.int64)
    picked_scores = np.zeros((b, n), dtype=np.float64)
    capped = developer is not None and max_per_developer is not None
    picked_dev = np.full((b, n), -1, dtype=np.int64)
    count = np.zeros(b, dtype=np.int64)
    active = np.arange(b)  # lists still walking: they leave once full (most fill in a few steps)
    for j in range(length):
        if n == 0 or not len(active):
            break
        position = ranked[active, j]
        safe = np.maximum(position, 0)
        ok = (position >= 0) & (scores[active, j] >= min_score) & ~blocked[target[active], safe]
        if capped:
            code = developer[safe]
            ok &= (picked_dev[active] == code[:, None]).sum(axis=1) < max_per_developer
        kept = active[ok]
        slot = count[kept]
        picks[kept, slot] = position[ok]
        picked_scores[kept, slot] = scores[kept, j]
        if capped:
            picked_dev[kept, slot] = code[ok]
        blocked[target[kept], position[ok]] = True
        count[kept] += 1
        active = active[count[active] < n]
    return picks, picked_scores


def sorted_histories(history_indptr: np.ndarray, history_indices: np.ndarray, history_data: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Each user's history apps, heaviest first (ties: lower position), from CSR arrays.

    Returns ``(apps int [b, h], weights float64 [b, h])`` with ``h`` the longest history,
    ``-1``/0 padding at the end of shorter rows.
    """
    lengths = np.diff(history_indptr)
    b = len(lengths)
    h = int(lengths.max()) if b else 0
    apps = np.full((b, h), -1, dtype=np.int64)
    weights = np.zeros((b, h), dtype=np.float64)
    if h == 0:
        return apps, weights
    owner = np.repeat(np.arange(b), lengths)
    data = np.asarray(history_data, dtype=np.float64)
    order = np.lexsort((history_indices, -data, owner))
    slot = np.arange(len(order)) - np.repeat(history_indptr[:-1], lengths)
    apps[owner, slot] = history_indices[order]
    weights[owner, slot] = data[order]
    return apps, weights


def explain_block(catalog: Catalog, recommended: np.ndarray, history_apps: np.ndarray,
                  sub_batch: int = 256) -> np.ndarray:
    """:func:`explain_with_history` for a block: ``int [b, m]`` anchors (``-1`` where the
    recommendation is padding or the history is empty).

    ``recommended`` is ``int [b, m]`` positions (``-1`` padding), ``history_apps`` the
    output of :func:`sorted_histories` (its order gives the tie-breaking). Users are
    processed ``sub_batch`` at a time so memory is ``sub_batch * m * h`` floats.
    """
    b, m = recommended.shape
    anchors = np.full((b, m), -1, dtype=np.int64)
    for start in range(0, b, sub_batch):
        part = slice(start, start + sub_batch)
        lengths = (history_apps[part] >= 0).sum(axis=1)
        h = int(lengths.max()) if len(lengths) else 0
        if h == 0:
            continue
        hist = history_apps[part, :h]
        valid = hist >= 0
        left, right = np.maximum(recommended[part], 0), np.maximum(hist, 0)
        same = (catalog.category[left][:, :, None] == catalog.category[right][:, None, :]).astype(np.float32)
        if catalog.text_unit is None:
            similarity = same
        else:
            cosine = np.clip(np.matmul(catalog.text_unit[left], np.swapaxes(catalog.text_unit[right], 1, 2)), 0.0, 1.0)
            similarity = CATEGORY_SIMILARITY_WEIGHT * same + (1.0 - CATEGORY_SIMILARITY_WEIGHT) * cosine
        similarity = np.where(valid[:, None, :], similarity, -np.inf)
        best = np.take_along_axis(hist, np.argmax(similarity, axis=2), axis=1)  # argmax: first maximum
        anchors[part] = np.where((recommended[part] >= 0) & (lengths > 0)[:, None], best, -1)
    return anchors


def because_you_liked_block(
    history_apps: np.ndarray,
    neighbours: np.ndarray,
    neighbour_scores: np.ndarray,
    blocked: np.ndarray,
    anchors: int = BECAUSE_ANCHORS,
    per_anchor: int = BECAUSE_PER_ANCHOR,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """because_you_liked for a block: the neighbours of each user's first ``anchors`` history apps.

    ``history_apps`` comes from :func:`sorted_histories` (heaviest first); ``blocked`` and
    ``rows`` as in :func:`fill_ranked_block`. Returns ``(apps, scores, anchor apps)``, each
    ``[b, anchors * per_anchor]`` with ``-1``/0 padding at the end of each row.
    """
    b = len(history_apps)
    width = anchors * per_anchor
    apps = np.full((b, width), -1, dtype=np.int64)
    scores = np.zeros((b, width), dtype=np.float64)
    anchor_of = np.full((b, width), -1, dtype=np.int64)
    k = neighbours.shape[1] if neighbours.ndim == 2 else 0
    for a in range(min(anchors, history_apps.shape[1])):
        anchor = history_apps[:, a]
        has = anchor >= 0
        ranked = np.where(has[:, None], neighbours[np.maximum(anchor, 0)], -1).reshape(b, k)
        ranked_scores = neighbour_scores[np.maximum(anchor, 0)].reshape(b, k)
        picks, kept = fill_ranked_block(ranked, ranked_scores, blocked, per_anchor,
                                        min_score=BECAUSE_MIN_SIMILARITY, rows=rows)
        part = slice(a * per_anchor, (a + 1) * per_anchor)
        apps[:, part], scores[:, part] = picks, kept
        anchor_of[:, part] = np.where(picks >= 0, anchor[:, None], -1)
    # Close the gaps left by anchors with fewer than per_anchor picks (order kept).
    order = np.argsort(apps < 0, axis=1, kind="stable")
    return (np.take_along_axis(apps, order, axis=1), np.take_along_axis(scores, order, axis=1),
            np.take_along_axis(anchor_of, order, axis=1))


def _top_shares(values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``n`` largest entries in descending order (ties: lower column) as ``(columns, values)``;
    columns of non-positive entries are -1."""
    order = np.argsort(-values, axis=1, kind="stable")[:, :n]
    top = np.take_along_axis(values, order, axis=1)
    return np.where(top > 0, order, -1), top


def recommended_categories_block(
    category_weights: np.ndarray, list_categories: np.ndarray, n_categories: int, n: int = RECOMMENDED_CATEGORIES_N
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`recommended_categories` for a block: ``(category codes int [b, n] with -1 padding, scores)``.

    ``list_categories`` is ``int [b, m]`` category codes of the for_you apps (-1 padding).
    Scores are not rounded (callers round the kept ones).
    """
    interest = np.clip(np.asarray(category_weights, dtype=np.float64), 0.0, None)
    total = interest.sum(axis=1, keepdims=True)
    interest = np.divide(interest, total, out=interest.copy(), where=total > 0)
    b = len(list_categories)
    valid = list_categories >= 0
    rows = np.broadcast_to(np.arange(b)[:, None], list_categories.shape)
    shown = np.bincount(rows[valid] * n_categories + list_categories[valid],
                        minlength=b * n_categories).reshape(b, n_categories).astype(np.float64)
    shown_total = shown.sum(axis=1, keepdims=True)
    shown = np.divide(shown, shown_total, out=shown, where=shown_total > 0)
    return _top_shares(0.5 * interest + 0.5 * shown, n)


def search_boosts_block(category_weights: np.ndarray, n: int = SEARCH_BOOST_CATEGORIES_N
                        ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`search_boosts` for a block: ``(category codes int [b, n] with -1 padding, boosts 1 + share)``."""
    interest = np.clip(np.asarray(category_weights, dtype=np.float64), 0.0, None)
    total = interest.sum(axis=1, keepdims=True)
    share = np.divide(interest, total, out=np.zeros_like(interest), where=total > 0)
    codes, top = _top_shares(share, n)
    return codes, 1.0 + top
