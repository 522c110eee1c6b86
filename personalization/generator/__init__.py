"""Synthetic app-store world: a deterministic, seeded generator of the raw landing zone.

The world
    A catalogue of apps (about 30 real store categories; games split into puzzle,
    action, casual, ...), each with a developer (developers own several apps, Zipf-like),
    price (~85 % free), rating, age rating, languages, regions and a description and tags
    drawn from per-category vocabularies, so text similarity is meaningful. Users live in
    8 countries with consistent region/city/language/IANA zone, have a device, an age
    group, an often missing gender and consent flags; hidden traits drive their behaviour:
    a Dirichlet taste over categories, a heavy-tailed activity level, price sensitivity, a
    preferred local hour and a churn propensity. They are written to ``Lake.sim_truth()``
    only (``user_id``, ``taste`` list over ``CATEGORIES`` order, ``activity`` expected
    sessions/day, ``price_sensitivity`` 0..1, ``preferred_hour`` 0..23 local,
    ``churn_propensity`` 0..1, ``churn_date`` or null); the pipeline never reads them.
    Users keep sending events after withdrawing consent: honouring consent is the pipeline's job.

    Every day (UTC), users run sessions with daily and weekly cycles in their local time:
    store visits (searches, slates of impressions on surfaces from a pluggable
    :class:`ImpressionPolicy`, app views and installs whose chances depend on taste fit and
    app quality and popularity), usage (``app_open`` with durations: the bulk of the volume), purchases,
    ratings, uninstalls, push notifications and a few consent changes. Churners fade out,
    new users sign up and new apps are released each day. Popularity is heavy-tailed.

The raw zone (``docs/architecture.md``)
    ``raw/apps|users/date=D`` (released / signed up on D; the first date holds the initial
    catalogue and users), ``raw/events/date=D/part-*.jsonl`` (about 0.5 % of a day's
    events land one date late; ``generator.bad_record_rate`` of lines are bad records with
    exactly one defect each, see ``records.py``; duplicates copy a line of the same or the
    previous landing date), ``raw/editorial/{featured,denylist}.jsonl``,
    ``raw/_manifests/date=D/injected.json`` and ``raw/_manifests/world.json``.

Regenerate
    ``python -m personalization.generator --scale small --seed 42`` (or ``generate_world(config)``);
    the same scale, seed, start date and bad-record rate give byte-identical files, and a
    new world replaces the previous one under the same lake root. ``medium`` and ``large``
    stream to disk one day (and one user chunk) at a time.
"""

from __future__ import annotations

from personalization.generator.generate import (
    GENERATOR_VERSION,
    WorldSummary,
    generate_world,
    read_world_summary,
    resolve_preset,
    world_dates,
)
from personalization.generator.policy import (
    DefaultStorePolicy,
    ImpressionPolicy,
    RecommendationListPolicy,
    SlateRequest,
)
from personalization.generator.presets import SCALE_PRESETS, ScalePreset
from personalization.generator.records import INJECTED_REASONS
from personalization.generator.vocabulary import CATEGORIES

__all__ = [
    "CATEGORIES",
    "GENERATOR_VERSION",
    "INJECTED_REASONS",
    "SCALE_PRESETS",
    "DefaultStorePolicy",
    "ImpressionPolicy",
    "RecommendationListPolicy",
    "ScalePreset",
    "SlateRequest",
    "WorldSummary",
    "generate_world",
    "read_world_summary",
    "resolve_preset",
    "world_dates",
]
