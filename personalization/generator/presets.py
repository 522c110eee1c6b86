"""Scale presets of the synthetic world (``config.generator.scale``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScalePreset:
    """Size of a generated world.

    Totals over the window are ``n_users + days * new_users_per_day`` users and
    ``n_apps + days * new_apps_per_day`` apps.
    """

    name: str
    #: Users who signed up before the first date (land in the first day's users file).
    n_users: int
    #: Apps released before the first date (the initial catalogue).
    n_apps: int
    #: Number of landing dates, starting at ``config.generator.start_date``.
    days: int
    new_users_per_day: int
    new_apps_per_day: int
    #: Multiplies every user's expected sessions per day (tunes events per user, > 0).
    activity_scale: float
    #: Users simulated together; bounds peak memory to about one chunk's events.
    chunk_users: int

    @property
    def total_users(self) -> int:
        return self.n_users + self.days * self.new_users_per_day

    @property
    def total_apps(self) -> int:
        return self.n_apps + self.days * self.new_apps_per_day


SCALE_PRESETS: dict[str, ScalePreset] = {
    # ~310 users, ~155 apps, ~30k raw lines: unit tests and smoke runs (< 10 s).
    "tiny": ScalePreset(
        "tiny",
        n_users=280,
        n_apps=140,
        days=14,
        new_users_per_day=2,
        new_apps_per_day=1,
        activity_scale=1.3,
        chunk_users=200_000,
    ),
    # ~3000 users, ~800 apps, ~300k raw lines: the default of `make run` (< 90 s).
    "small": ScalePreset(
        "small",
        n_users=2_800,
        n_apps=760,
        days=14,
        new_users_per_day=15,
        new_apps_per_day=3,
        activity_scale=1.3,
        chunk_users=200_000,
    ),
    # ~100k users, ~10k apps, ~10M events over 30 days; streamed day by day.
    "medium": ScalePreset(
        "medium",
        n_users=95_000,
        n_apps=9_700,
        days=30,
        new_users_per_day=170,
        new_apps_per_day=10,
        activity_scale=0.45,
        chunk_users=200_000,
    ),
    # ~1M users, ~20k apps, ~100M events; streamed day by day in user chunks.
    "large": ScalePreset(
        "large",
        n_users=950_000,
        n_apps=19_400,
        days=30,
        new_users_per_day=1_700,
        new_apps_per_day=20,
        activity_scale=0.45,
        chunk_users=100_000,
    ),
}
