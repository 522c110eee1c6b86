"""What the store shows: the impression policy interface and the default store policy.

The simulation asks a policy to fill *slates* (one row per slate: a user on a
surface, optionally with a category the user asked for). A policy returns app
indices; the simulator then drops anything the user could not see (unreleased,
unavailable in the country, age-restricted) and duplicates within a slate, so a
plugged-in policy cannot break the world's invariants. An experiment shows served
recommendations with :class:`RecommendationListPolicy`; a policy that also has a
``variants(request)`` method tags each slate with an experiment variant, which the
simulator copies onto the slate's impressions, views, installs and paid-install
purchases (:func:`slate_variants`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from jobs import columns as C
from personalization.generator.world import SimWorld, WeightedSampler

SURFACE_INDEX = {name: i for i, name in enumerate(C.SURFACES)}

# Sources an impression can come from, and each surface's mixture over them.
_POPULAR, _CATEGORY, _NEW, _FEATURED, _EXPLORE = range(5)
# fmt: off
_SURFACE_MIX: dict[str, tuple[float, float, float, float, float]] = {
    #                        popular category new   featured explore
    "for_you":               (0.60, 0.00, 0.10, 0.05, 0.25),
    "because_you_liked":     (0.20, 0.70, 0.00, 0.00, 0.10),
    "trending_in_your_area": (0.85, 0.00, 0.10, 0.00, 0.05),
    "new_for_you":           (0.10, 0.00, 0.85, 0.00, 0.05),
    "featured":              (0.05, 0.00, 0.00, 0.95, 0.00),
    "search":                (0.00, 0.90, 0.00, 0.00, 0.10),
    "category_browse":       (0.00, 0.90, 0.05, 0.00, 0.05),
    "top_charts":            (0.95, 0.00, 0.00, 0.00, 0.05),
    "notification":          (0.50, 0.00, 0.40, 0.10, 0.00),
}
# fmt: on
_MIX_CDF = np.cumsum(np.array([_SURFACE_MIX[name] for name in C.SURFACES]), axis=1)
#: Apps released within this many days count as "new".
NEW_APP_DAYS = 30


@dataclass(frozen=True)
class SlateRequest:
    """Slates to fill on one day; arrays have one entry per slate."""

    day: int  # days since the world's start date
    date: str  # the same day as YYYY-MM-DD
    users: np.ndarray  # int64 user indices (u0000123 -> 123)
    surfaces: np.ndarray  # int64 indices into jobs.columns.SURFACES
    categories: np.ndarray  # int64 category index the user asked for (search, category_browse), else -1
    slate_size: int  # columns of the answer


class ImpressionPolicy(Protocol):
    """Chooses the apps shown on each slate."""

    def __call__(self, request: SlateRequest, world: SimWorld, rng: np.random.Generator) -> np.ndarray:
        """A (len(request.users), request.slate_size) int64 matrix of app indices; -1 leaves a position empty."""
        ...


def slate_variants(policy: ImpressionPolicy, request: SlateRequest) -> np.ndarray:
    """The variant tag of each slate (object array, None = untagged) from ``policy.variants`` when it has one."""
    variants = getattr(policy, "variants", None)
    if variants is None:
        return np.full(len(request.users), None, dtype=object)
    tags = np.asarray(variants(request), dtype=object)
    if tags.shape != (len(request.users),):
        raise ValueError(f"policy.variants returned shape {tags.shape}, expected ({len(request.users)},)")
    return tags


def clean_slates(world: SimWorld, request: SlateRequest, apps: np.ndarray) -> np.ndarray:
    """Blank (-1) positions the user cannot see and repeats of an app within a slate."""
    apps = np.asarray(apps, dtype=np.int64).reshape(len(request.users), request.slate_size).copy()
    owners = np.repeat(request.users, request.slate_size)
    visible = world.can_see(owners, apps.ravel(), request.day).reshape(apps.shape)
    apps[~visible] = -1
    for j in range(1, apps.shape[1]):
        repeated = (apps[:, :j] == apps[:, j : j + 1]).any(axis=1)
        apps[repeated, j] = -1
    return apps


class DefaultStorePolicy:
    """The store's own non-personalised merchandising: popularity charts, the category
    or query the user asked for, new releases, editorial picks and random exploration."""

    def __init__(self, retries: int = 4):
        self.retries = retries
        self._cache_key: tuple[int, int] | None = None
        self._samplers: dict[object, WeightedSampler] = {}

    def _sampler(self, world: SimWorld, day: int, source: object) -> WeightedSampler:
        if self._cache_key != (day, world.n_apps):
            self._cache_key, self._samplers = (day, world.n_apps), {}
        if source not in self._samplers:
            n = world.n_apps
            shown = np.flatnonzero((world.app_release_day[:n] <= day) & ~world.app_denied[:n])
            popularity = world.app_popularity[shown]
            if source == _POPULAR:
                sampler = WeightedSampler(shown, popularity)
            elif source == _EXPLORE:
                sampler = WeightedSampler(shown, np.ones(len(shown)))
            elif source == _NEW:
                recent = world.app_release_day[shown] >= day - NEW_APP_DAYS
                sampler = WeightedSampler(shown[recent], np.sqrt(popularity[recent]))
                if len(sampler) == 0:
                    sampler = self._sampler(world, day, _POPULAR)
            elif source == _FEATURED:
                featured = world.featured[np.isin(world.featured, shown)]
                sampler = WeightedSampler(featured, 1.0 / np.arange(1, len(featured) + 1))
                if len(sampler) == 0:
                    sampler = self._sampler(world, day, _POPULAR)
            else:  # ("category", c): popularity within one category
                in_category = world.app_category[shown] == source[1]
                sampler = WeightedSampler(shown[in_category], popularity[in_category])
                if len(sampler) == 0:
                    sampler = self._sampler(world, day, _POPULAR)
            self._samplers[source] = sampler
        return self._samplers[source]

    def __call__(self, request: SlateRequest, world: SimWorld, rng: np.random.Generator) -> np.ndarray:
        n, k = len(request.users), request.slate_size
        categories = np.asarray(request.categories, dtype=np.int64).copy()
        # "Because you liked": the category of the user's most used installed app.
        liked = (request.surfaces == SURFACE_INDEX["because_you_liked"]) & (categories < 0)
        if liked.any():
            owners = request.users[liked]
            slots = world.installed[owners]
            best = np.argmax(np.where(slots >= 0, world.install_affinity[owners], -1.0), axis=1)
            top_app = slots[np.arange(len(owners)), best]
            categories[liked] = np.where(top_app >= 0, world.app_category[np.maximum(top_app, 0)], -1)
        source = (rng.random((n, k))[..., None] > _MIX_CDF[request.surfaces][:, None, :]).sum(axis=-1)
        source = np.minimum(source, _EXPLORE)
        source[(source == _CATEGORY) & (categories[:, None] < 0)] = _POPULAR
        cell_category = np.broadcast_to(categories[:, None], (n, k))
        apps = np.full((n, k), -1, np.int64)
        for _ in range(self.retries):
            empty = apps < 0
            if not empty.any():
                break
            for src in (_POPULAR, _NEW, _FEATURED, _EXPLORE):
                cells = empty & (source == src)
                apps[cells] = self._sampler(world, request.day, src).draw(int(cells.sum()), rng)
            category_cells = empty & (source == _CATEGORY)
            wanted = cell_category[category_cells]
            drawn = np.full(len(wanted), -1, np.int64)
            for cat in np.unique(wanted):
                rows = wanted == cat
                drawn[rows] = self._sampler(world, request.day, ("category", int(cat))).draw(
                    int(rows.sum()), rng
                )
            apps[category_cells] = drawn
            apps = clean_slates(world, request, apps)
        return apps


class RecommendationListPolicy:
    """Shows served recommendations (user_id -> ranked app_ids) on chosen surfaces.

    Slates of other surfaces, and of users without recommendations, come from
    ``fallback`` (the default store policy unless given). ``variants`` (user_id ->
    tag such as ``"exp:treatment"``, the serving table's ``variant``) tags the slates
    that show the user's served list.
    """

    def __init__(
        self,
        recommendations: Mapping[str, Sequence[str]],
        surfaces: Iterable[str] = ("for_you",),
        fallback: ImpressionPolicy | None = None,
        variants: Mapping[str, str] | None = None,
    ):
        self.recommendations = {
            int(user[1:]): np.array([int(app[1:]) for app in apps if app[1:].isdigit()], dtype=np.int64)
            for user, apps in recommendations.items()
            if user[1:].isdigit()
        }
        self.tags = {int(user[1:]): str(tag) for user, tag in (variants or {}).items() if user[1:].isdigit()}
        self.surfaces = np.array([SURFACE_INDEX[name] for name in surfaces], dtype=np.int64)
        self.fallback = fallback if fallback is not None else DefaultStorePolicy()

    def variants(self, request: SlateRequest) -> np.ndarray:
        """The tag of each slate showing a served list (None elsewhere)."""
        tags = np.full(len(request.users), None, dtype=object)
        for row in np.flatnonzero(np.isin(request.surfaces, self.surfaces)).tolist():
            user = int(request.users[row])
            if user in self.recommendations:
                tags[row] = self.tags.get(user)
        return tags

    def __call__(self, request: SlateRequest, world: SimWorld, rng: np.random.Generator) -> np.ndarray:
        apps = np.asarray(self.fallback(request, world, rng), dtype=np.int64).copy()
        for row in np.flatnonzero(np.isin(request.surfaces, self.surfaces)).tolist():
            served = self.recommendations.get(int(request.users[row]))
            if served is not None:
                shown = served[: request.slate_size]
                apps[row] = -1
                apps[row, : len(shown)] = shown
        return apps


__all__ = [
    "DefaultStorePolicy",
    "ImpressionPolicy",
    "RecommendationListPolicy",
    "SlateRequest",
    "clean_slates",
    "slate_variants",
]
