"""Business rules and list re-ranking for batch scoring: pure numpy functions.

Every function works on one block of users at a time (``b`` users x ``n`` apps,
or ``b`` users x ``p`` pooled candidates) so scoring memory stays bounded by the
block size. Nothing here reads files or configuration: callers pass the values
(``config.scoring.*``) in, which keeps each rule testable on tiny arrays.

Conventions:
- an *eligibility mask* is ``bool [b, n]``: True where the app may be shown;
- an app's ``regions`` list empty or missing means "available everywhere";
- a user whose age group is unknown is treated as the youngest store age group
  (13), so apps rated 17+ are never shown to users of unknown age.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import scipy.sparse as sp

from jobs.columns import AGE_GROUP_MIN_AGE

#: Minimum age assumed when a user's age group is missing or unknown (the youngest group).
UNKNOWN_AGE_MIN = min(AGE_GROUP_MIN_AGE.values())


# ------------------------------------------------------------------ eligibility
def user_min_age(age_groups: Sequence[str | None]) -> np.ndarray:
    """Minimum age in years of each user's age group (``jobs.columns.AGE_GROUP_MIN_AGE``).

    Unknown or missing groups map to :data:`UNKNOWN_AGE_MIN` (the conservative choice).
    """
    return np.array([AGE_GROUP_MIN_AGE.get(group, UNKNOWN_AGE_MIN) for group in age_groups], dtype=np.int16)


def age_mask(min_age: np.ndarray, app_age_rating: np.ndarray) -> np.ndarray:
    """``bool [b, n]``: app allowed when its age rating (years) is at most the user's minimum age.

    Apps with a missing rating (negative or NaN after loading) are treated as 17+.
    """
    rating = np.where(np.isfinite(app_age_rating) & (app_age_rating >= 0), app_age_rating, 17)
    return rating[None, :] <= min_age[:, None]


def availability_matrix(
    app_regions: Sequence[Iterable[str] | None], countries: Sequence[str]
) -> np.ndarray:
    """``bool [len(countries) + 1, n]``: row ``c`` is True where the app is available in country ``c``.

    The last row is for users whose country is unknown: only apps available
    everywhere (empty region list). Matching is case-insensitive.
    """
    country_row = {country.upper(): index for index, country in enumerate(countries)}
    matrix = np.zeros((len(countries) + 1, len(app_regions)), dtype=bool)
    for app, regions in enumerate(app_regions):
        regions = [] if regions is None else [str(region).upper() for region in regions]
        if not regions:
            matrix[:, app] = True
            continue
        for region in regions:
            row = country_row.get(region)
            if row is not None:
                matrix[row, app] = True
    return matrix


def region_mask(user_country_row: np.ndarray, availability: np.ndarray) -> np.ndarray:
    """``bool [b, n]``: rows of :func:`availability_matrix` for each user's country row (-1 = unknown)."""
    rows = np.where(user_country_row < 0, availability.shape[0] - 1, user_country_row)
    return availability[rows]


def paid_mask(is_buyer: np.ndarray, app_price: np.ndarray, paid_only_for_buyers: bool) -> np.ndarray:
    """``bool [b, n]``: paid apps (price > 0 USD) allowed only for users who have bought before."""
    if not paid_only_for_buyers:
        return np.ones((len(is_buyer), len(app_price)), dtype=bool)
    free = ~(np.nan_to_num(app_price, nan=0.0) > 0)
    return free[None, :] | is_buyer.astype(bool)[:, None]


def denylist_mask(app_ids: Sequence[str], denylist: Iterable[str]) -> np.ndarray:
    """``bool [n]``: False for denylisted apps."""
    denied = set(denylist)
    return np.array([app_id not in denied for app_id in app_ids], dtype=bool)


def owned_mask(*owned: sp.csr_matrix | None, shape: tuple[int, int]) -> np.ndarray:
    """``bool [b, n]``: False where the user installed, purchased or otherwise interacted with the app.

    Each argument is a ``[b, n]`` sparse matrix whose stored entries mark owned apps
    (explicit negatives included: an uninstalled app is not recommended back).
    """
    allowed = np.ones(shape, dtype=bool)
    for matrix in owned:
        if matrix is None or matrix.nnz == 0:
            continue
        coo = matrix.tocoo()
        allowed[coo.row, coo.col] = False
    return allowed


def eligibility(
    *,
    min_age: np.ndarray,
    app_age_rating: np.ndarray,
    user_country_row: np.ndarray,
    availability: np.ndarray,
    is_buyer: np.ndarray,
    app_price: np.ndarray,
    paid_only_for_buyers: bool,
    allowed_apps: np.ndarray,
    owned: Sequence[sp.csr_matrix | None] = (),
) -> np.ndarray:
    """All business rules at once: ``bool [b, n]``, True where the app may be recommended.

    ``allowed_apps`` is ``bool [n]`` (the denylist, and any catalogue-wide exclusion).
    """
    mask = age_mask(min_age, app_age_rating)
    mask &= region_mask(user_country_row, availability)
    mask &= paid_mask(is_buyer, app_price, paid_only_for_buyers)
    mask &= allowed_apps[None, :]
    mask &= owned_mask(*owned, shape=mask.shape)
    return mask


# ------------------------------------------------------------------ similarity
def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def pairwise_similarity(
    category_codes: np.ndarray, text_unit: np.ndarray | None, category_weight: float = 0.5
) -> np.ndarray:
    """Content similarity in [0, 1] between candidates, batched over the leading axes.

    ``sim = w * [same category] + (1 - w) * max(cos(text_vec), 0)`` with ``w = category_weight``;
    without text vectors it is the same-category indicator. Shapes: codes ``[..., p]``,
    text ``[..., p, d]`` (unit rows) -> ``[..., p, p]``.
    """
    same = (category_codes[..., :, None] == category_codes[..., None, :]).astype(np.float32)
    if text_unit is None:
        return same
    cosine = np.clip(np.matmul(text_unit, np.swapaxes(text_unit, -1, -2)), 0.0, 1.0)
    return category_weight * same + (1.0 - category_weight) * cosine


def intra_list_diversity_sum(
    lists: np.ndarray, category_codes: np.ndarray, text_unit: np.ndarray | None
) -> tuple[float, int]:
    """Sum over lists of each list's mean pairwise dissimilarity ``1 - sim``, and the number of lists.

    ``lists`` is ``int [b, n]`` of app positions with -1 padding; lists with fewer than
    two items are skipped. Sums let callers average over many blocks.
    """
    lists = np.asarray(lists, dtype=np.int64)
    valid = lists >= 0
    qualifies = valid.sum(axis=1) >= 2
    if not qualifies.any():
        return 0.0, 0
    items, valid = np.maximum(lists[qualifies], 0), valid[qualifies]
    sim = pairwise_similarity(category_codes[items], None if text_unit is None else text_unit[items])
    upper = np.triu(np.ones((lists.shape[1], lists.shape[1]), dtype=bool), k=1)
    pairs = valid[:, :, None] & valid[:, None, :] & upper[None]
    per_list = ((1.0 - sim) * pairs).sum(axis=(1, 2)) / pairs.sum(axis=(1, 2))
    return float(per_list.sum()), int(len(per_list))


def intra_list_diversity(lists: np.ndarray, category_codes: np.ndarray, text_unit: np.ndarray | None) -> float:
    """Mean over lists of the mean pairwise dissimilarity ``1 - sim`` (see :func:`pairwise_similarity`).

    Value in [0, 1]; NaN when no list has two items.
    """
    total, count = intra_list_diversity_sum(lists, category_codes, text_unit)
    return total / count if count else float("nan")


class PoolSimilarity:
    """Rows of :func:`pairwise_similarity` of each user's candidate pool, computed on demand.

    MMR only ever reads ``sim[user, chosen, :]`` (one row per user and step), so this
    computes ``[b, p]`` per step instead of materialising ``[b, p, p]`` (``n / p`` times
    less work and memory). Shapes: codes ``int [b, p]``, text ``float32 [b, p, d]`` (unit rows).
    """

    def __init__(self, category_codes: np.ndarray, text_unit: np.ndarray | None, category_weight: float = 0.5):
        self.codes = np.asarray(category_codes)
        self.text = None if text_unit is None else np.asarray(text_unit, dtype=np.float32)
        self.weight = float(category_weight)

    def rows(self, choice: np.ndarray) -> np.ndarray:
        """``float [b, p]``: similarity of each user's candidate ``choice[user]`` to all of its candidates."""
        users = np.arange(len(choice))
        same = (self.codes == self.codes[users, choice][:, None]).astype(np.float32)
        if self.text is None:
            return same
        chosen = self.text[users, choice][:, :, None]  # [b, d, 1]
        cosine = np.clip(np.matmul(self.text, chosen)[:, :, 0], 0.0, 1.0)
        return self.weight * same + (1.0 - self.weight) * cosine


# ------------------------------------------------------------------ re-ranking
def rerank(
    relevance: np.ndarray,
    n: int,
    *,
    developer: np.ndarray | None = None,
    max_per_developer: int | None = None,
    category: np.ndarray | None = None,
    max_per_category: int | None = None,
    similarity: np.ndarray | PoolSimilarity | None = None,
    mmr_lambda: float = 1.0,
) -> np.ndarray:
    """Greedy batched list selection with developer/category caps and optional MMR.

    Args:
        relevance: ``float [b, p]`` candidate scores; ``-inf`` marks ineligible candidates.
        n: list length wanted.
        developer, category: ``int [b, p]`` codes of each candidate (for the caps).
        max_per_developer, max_per_category: at most this many picks share a code (None: no cap).
        similarity: ``float [b, p, p]`` in [0, 1] (or a :class:`PoolSimilarity` computing the
            rows it needs); with it, each step picks
            ``argmax lambda * rel_norm - (1 - lambda) * max_sim_to_selected`` (MMR), where
            ``rel_norm`` is relevance min-max scaled to [0, 1] per user.
        mmr_lambda: MMR trade-off; 1.0 is pure relevance.

    Returns:
        ``int [b, n]`` positions into the candidate axis, ``-1`` where fewer than ``n``
        candidates satisfy the rules.
    """
    relevance = np.asarray(relevance, dtype=np.float64)
    b, p = relevance.shape
    rows = np.arange(b)
    available = np.isfinite(relevance)
    picked = np.full((b, n), -1, dtype=np.int64)
    if similarity is not None:
        low = np.min(np.where(available, relevance, np.inf), axis=1, keepdims=True)
        high = np.max(np.where(available, relevance, -np.inf), axis=1, keepdims=True)
        low = np.where(np.isfinite(low), low, 0.0)
        high = np.where(np.isfinite(high), high, 0.0)
        span = np.where(high - low > 0, high - low, 1.0)
        objective_base = np.where(available, (relevance - low) / span, 0.0)
        max_sim = np.zeros((b, p))
    developer_count = np.zeros((b, p), dtype=np.int32)
    category_count = np.zeros((b, p), dtype=np.int32)
    for step in range(min(n, p)):
        if similarity is None or step == 0:
            objective = relevance.copy() if similarity is None else objective_base.copy()
        else:
            objective = mmr_lambda * objective_base - (1.0 - mmr_lambda) * max_sim
        objective[~available] = -np.inf
        choice = np.argmax(objective, axis=1)
        ok = np.isfinite(objective[rows, choice])
        if not ok.any():
            break
        picked[ok, step] = choice[ok]
        available[rows[ok], choice[ok]] = False
        if developer is not None and max_per_developer is not None:
            same = (developer == developer[rows, choice][:, None]) & ok[:, None]
            developer_count += same
            available &= developer_count < max_per_developer
        if category is not None and max_per_category is not None:
            same = (category == category[rows, choice][:, None]) & ok[:, None]
            category_count += same
            available &= category_count < max_per_category
        if similarity is not None and step + 1 < min(n, p):  # the last pick's similarities are never read
            chosen = similarity.rows(choice) if isinstance(similarity, PoolSimilarity) else similarity[rows, choice, :]
            max_sim = np.where(ok[:, None], np.maximum(max_sim, chosen), max_sim)
    return picked


def cap_per_developer(ordered_apps: Sequence[int], developer: np.ndarray, max_per_developer: int) -> list[int]:
    """Keep the order of ``ordered_apps`` but drop apps once their developer has ``max_per_developer``."""
    counts: dict[int, int] = {}
    kept: list[int] = []
    for app in ordered_apps:
        code = int(developer[app])
        if counts.get(code, 0) < max_per_developer:
            counts[code] = counts.get(code, 0) + 1
            kept.append(int(app))
    return kept
