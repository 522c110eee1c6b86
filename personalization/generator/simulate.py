"""One day of behaviour for a contiguous chunk of users, fully vectorised with numpy.

Output is columnar (:class:`DayEvents`); turning it into JSON lines is
``records.py``'s job. Every timestamp lies inside the UTC day being simulated.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import numpy as np

from jobs import columns as C
from personalization.generator.policy import (
    SURFACE_INDEX,
    ImpressionPolicy,
    SlateRequest,
    clean_slates,
    slate_variants,
)
from personalization.generator.vocabulary import (
    CATEGORIES,
    CATEGORY_WORDS,
    CITIES,
    DIURNAL_WEIGHTS,
    GENERIC_WORDS,
    IAP_AMOUNTS,
    IAP_WEIGHTS,
    WEEKDAY_FACTORS,
)
from personalization.generator.world import (
    CONSENT_COLUMNS,
    SimWorld,
    categorical_rows,
    sigmoid,
)

ETYPE = {name: i for i, name in enumerate(C.EVENT_TYPES)}
SECONDS_PER_DAY = 86_400
SLATE_COLUMNS = 7  # slates show 4..7 apps
_DIURNAL = np.array(DIURNAL_WEIGHTS) / np.sum(DIURNAL_WEIGHTS)
_BROWSE_SURFACES = np.array(
    [
        SURFACE_INDEX[s]
        for s in (
            "for_you",
            "because_you_liked",
            "trending_in_your_area",
            "new_for_you",
            "featured",
            "category_browse",
            "top_charts",
        )
    ]
)
_BROWSE_SHARES = np.array([0.28, 0.07, 0.14, 0.1, 0.09, 0.2, 0.12])
_IAP_AMOUNTS = np.array(IAP_AMOUNTS)
_IAP_P = np.array(IAP_WEIGHTS) / np.sum(IAP_WEIGHTS)

# Behaviour constants (per day unless stated); the names say what they tune.
SEARCH_SHARE = 0.25  # of store sessions
NOTIFICATION_RATE = 0.25  # chance a user is sent a push notification
BEHAVIORAL_WITHDRAW_RATE = 0.002  # chance a consenting user withdraws behavioural consent
LOCATION_CONSENT_CHANGE_RATE = 0.0015  # chance a user flips location consent
CHURN_FADE_DAYS = 1.5  # e-folding time of activity after the churn date
IAP_RATE = 0.02  # in-app purchase chance per app open, for a price-insensitive user
RATING_RATE = 0.012  # chance an app open is followed by a rating


@dataclass
class DayEvents:
    """Columnar valid events of one chunk and day, sorted by ``ts``.

    Absent values: app/session/surface/query/consent_type/variant -1, position/rating 0,
    amount/duration NaN, consent_value -1.
    """

    etype: np.ndarray  # int8 index into EVENT_TYPES
    user: np.ndarray  # int64 user index
    app: np.ndarray  # int64 app index
    ts: np.ndarray  # int64 epoch seconds (UTC)
    session: np.ndarray  # int64 random 48-bit session number
    surface: np.ndarray  # int64 index into SURFACES
    position: np.ndarray  # int64 1..N
    query: np.ndarray  # int64 index into ``queries``
    amount: np.ndarray  # float64 USD
    duration: np.ndarray  # float64 seconds
    rating: np.ndarray  # int64 1..5
    consent_type: np.ndarray  # int64 index into CONSENT_TYPES
    consent_value: np.ndarray  # int8
    variant: np.ndarray  # int64 index into ``variants`` (experiment tag of the slate)
    queries: list[str]
    variants: list[str]

    def __len__(self) -> int:
        return len(self.etype)


class _Buffer:
    """Collects event columns block by block, then sorts them once by time."""

    _FIELDS = (
        "etype",
        "user",
        "app",
        "ts",
        "session",
        "surface",
        "position",
        "query",
        "amount",
        "duration",
        "rating",
        "consent_type",
        "consent_value",
        "variant",
    )
    _DEFAULTS = {
        "app": -1,
        "session": -1,
        "surface": -1,
        "position": 0,
        "query": -1,
        "amount": np.nan,
        "duration": np.nan,
        "rating": 0,
        "consent_type": -1,
        "consent_value": -1,
        "variant": -1,
    }
    _DTYPES = {"etype": np.int8, "amount": np.float64, "duration": np.float64, "consent_value": np.int8}

    def __init__(self) -> None:
        self.blocks: dict[str, list[np.ndarray]] = {name: [] for name in self._FIELDS}
        self.queries: list[str] = []
        self.variants: list[str] = []

    def variant_codes(self, tags: np.ndarray) -> np.ndarray:
        """Indices into ``self.variants`` of slate tags (object array, None -> -1), adding new tags."""
        codes = np.full(len(tags), -1, np.int64)
        for tag in {t for t in tags.tolist() if t is not None}:
            if tag not in self.variants:
                self.variants.append(tag)
            codes[tags == tag] = self.variants.index(tag)
        return codes

    def add(self, etype: str, user: np.ndarray, ts: np.ndarray, **columns: np.ndarray | int | float) -> None:
        n = len(user)
        if n == 0:
            return
        values = {"etype": ETYPE[etype], "user": user, "ts": ts, **columns}
        for name in self._FIELDS:
            value = values.get(name, self._DEFAULTS.get(name))
            dtype = self._DTYPES.get(name, np.int64)
            self.blocks[name].append(np.broadcast_to(np.asarray(value, dtype=dtype), (n,)))

    def finish(self) -> DayEvents:
        columns = {
            name: (np.concatenate(parts) if parts else np.zeros(0, self._DTYPES.get(name, np.int64)))
            for name, parts in self.blocks.items()
        }
        order = np.argsort(columns["ts"], kind="stable")
        return DayEvents(
            **{name: values[order] for name, values in columns.items()},
            queries=self.queries,
            variants=self.variants,
        )


def city_utc_offsets(date: dt.date) -> np.ndarray:
    """UTC offset (seconds) of every city's zone at noon UTC of ``date`` (DST-aware)."""
    noon = dt.datetime(date.year, date.month, date.day, 12, tzinfo=dt.timezone.utc)
    return np.array(
        [noon.astimezone(ZoneInfo(city.tz)).utcoffset().total_seconds() for city in CITIES], dtype=np.int64
    )


def _local_to_utc(
    world: SimWorld, users: np.ndarray, local_seconds: np.ndarray, offsets: np.ndarray
) -> np.ndarray:
    """Seconds into the UTC day for a local second-of-day (wrapped so events stay on this UTC day)."""
    return (local_seconds - offsets[world.user_city[users]]) % SECONDS_PER_DAY


def _make_queries(categories: np.ndarray, rng: np.random.Generator) -> list[str]:
    """Search phrases of 1-3 words drawn from the category vocabularies."""
    n_words = rng.integers(1, 3, len(categories))
    word_draws = rng.integers(0, 1 << 30, (len(categories), 2))
    add_generic = rng.random(len(categories)) < 0.3
    generic_draw = rng.integers(0, len(GENERIC_WORDS), len(categories))
    queries = []
    for k, cat in enumerate(categories.tolist()):
        words = CATEGORY_WORDS[CATEGORIES[cat]]
        phrase = [words[word_draws[k, j] % len(words)] for j in range(n_words[k])]
        if add_generic[k]:
            phrase.append(GENERIC_WORDS[generic_draw[k]])
        queries.append(" ".join(dict.fromkeys(phrase)))
    return queries


def simulate_chunk(
    world: SimWorld,
    lo: int,
    hi: int,
    day: int,
    policy: ImpressionPolicy,
    rng: np.random.Generator,
    activity_scale: float,
) -> DayEvents:
    """Simulate users ``lo..hi-1`` (all signed up by ``day``) for one UTC day; mutates installs and consent."""
    date = world.start_date + dt.timedelta(days=day)
    day_start = int(dt.datetime(date.year, date.month, date.day, tzinfo=dt.timezone.utc).timestamp())
    day_end = day_start + SECONDS_PER_DAY - 1
    offsets = city_utc_offsets(date)
    users = np.arange(lo, hi, dtype=np.int64)
    n = len(users)
    out = _Buffer()
    if n == 0:
        return out.finish()

    # ------------------------------------------------------- consent changes
    withdraw = world.consent[users, 0] & (rng.random(n) < BEHAVIORAL_WITHDRAW_RATE)
    flip_location = rng.random(n) < LOCATION_CONSENT_CHANGE_RATE
    consent_ts = day_start + rng.integers(0, SECONDS_PER_DAY, n)
    location_value = ~world.consent[users, 1]
    out.add(
        "consent_change",
        users[withdraw],
        consent_ts[withdraw],
        consent_type=C.CONSENT_TYPES.index("behavioral"),
        consent_value=0,
    )
    out.add(
        "consent_change",
        users[flip_location],
        consent_ts[flip_location] + 1,
        consent_type=C.CONSENT_TYPES.index("location"),
        consent_value=location_value[flip_location],
    )
    world.consent[users[withdraw], CONSENT_COLUMNS.index(C.CONSENT_BEHAVIORAL)] = False
    world.consent[users[flip_location], CONSENT_COLUMNS.index(C.CONSENT_LOCATION)] = location_value[
        flip_location
    ]

    # ------------------------------------- uninstalls of apps that do not fit
    slots = world.installed[lo:hi]
    has_app = slots >= 0
    row, col = np.nonzero(has_app)
    fit = world.fit_z(users[row], slots[row, col])
    hazard = 0.004 + 0.02 * sigmoid(-1.5 * fit - 1.0)
    drop = rng.random(len(row)) < hazard
    dropped_user, dropped_app = users[row[drop]], slots[row[drop], col[drop]].astype(np.int64)
    out.add(
        "uninstall",
        dropped_user,
        day_start + rng.integers(0, SECONDS_PER_DAY, len(dropped_user)),
        app=dropped_app,
    )
    world.installed[lo + row[drop], col[drop]] = -1
    world.install_affinity[lo + row[drop], col[drop]] = 0.0
    # An app uninstalled today is not reinstalled today (keeps each pair's event order consistent).
    uninstalled_today = dropped_user * world.app_category.shape[0] + dropped_app
    # Usage today draws from the installs as of now (after those uninstalls, before today's installs).
    installed_now = world.installed[lo:hi].copy()
    affinity_now = world.install_affinity[lo:hi].copy()

    # --------------------------------------------------------------- sessions
    weekday_factor = WEEKDAY_FACTORS[date.weekday()]
    churned_days = day - world.user_churn_day[users]
    fade = np.where(churned_days > 0, np.exp(-np.maximum(churned_days, 0) / CHURN_FADE_DAYS), 1.0)
    newcomer = np.where(world.user_signup_day[users] == day, 1.5, 1.0)
    expected = world.user_activity[users] * activity_scale * weekday_factor * fade * newcomer
    s_user = np.repeat(users, rng.poisson(expected))
    n_sessions = len(s_user)
    s_session = rng.integers(1, 1 << 48, n_sessions)
    use_preferred = rng.random(n_sessions) < 0.55
    hour = np.where(
        use_preferred,
        (world.user_preferred_hour[s_user] + np.round(rng.normal(0, 2.0, n_sessions))).astype(np.int64) % 24,
        rng.choice(24, size=n_sessions, p=_DIURNAL),
    )
    local_seconds = hour * 3600 + rng.integers(0, 3600, n_sessions)
    # Keep the last 20 minutes of the UTC day free so a session's events stay on this day.
    s_start = day_start + np.minimum(
        _local_to_utc(world, s_user, local_seconds, offsets), SECONDS_PER_DAY - 1200
    )
    n_installed = (installed_now[s_user - lo] >= 0).sum(axis=1)
    store = (rng.random(n_sessions) < 0.15 + 0.6 * np.exp(-n_installed / 2.5)) | (n_installed == 0)

    candidates: list[
        tuple[np.ndarray, ...]
    ] = []  # install candidates: user, app, ts, session, surface, position, variant

    # ---------------------------------------------------------- store visits
    st = np.flatnonzero(store)
    st_user, st_start, st_session = s_user[st], s_start[st], s_session[st]
    n_store = len(st)
    is_search = rng.random(n_store) < SEARCH_SHARE
    surface = np.where(
        is_search,
        SURFACE_INDEX["search"],
        _BROWSE_SURFACES[rng.choice(len(_BROWSE_SURFACES), size=n_store, p=_BROWSE_SHARES)],
    )
    asks_category = is_search | (surface == SURFACE_INDEX["category_browse"])
    category = np.full(n_store, -1, np.int64)
    if asks_category.any():
        category[asks_category] = categorical_rows(world.user_taste[st_user[asks_category]], rng)
    searches = np.flatnonzero(is_search)
    query_base = len(out.queries)
    out.queries.extend(_make_queries(category[searches], rng))
    out.add(
        "search",
        st_user[searches],
        st_start[searches],
        session=st_session[searches],
        surface=SURFACE_INDEX["search"],
        query=query_base + np.arange(len(searches)),
    )
    request = SlateRequest(day, date.isoformat(), st_user, surface, category, SLATE_COLUMNS)
    shown = clean_slates(world, request, policy(request, world, rng))
    slate_variant = out.variant_codes(slate_variants(policy, request))
    shown[np.arange(SLATE_COLUMNS)[None, :] >= rng.integers(4, SLATE_COLUMNS + 1, n_store)[:, None]] = -1
    # Close gaps left by blanked positions so positions run 1..N.
    shown = np.take_along_axis(shown, np.argsort(shown < 0, axis=1, kind="stable"), axis=1)
    r, c = np.nonzero(shown >= 0)
    imp_user, imp_app, imp_surface, imp_variant = st_user[r], shown[r, c], surface[r], slate_variant[r]
    imp_ts = st_start[r] + np.where(is_search[r], 4, 1) + c
    out.add(
        "impression",
        imp_user,
        imp_ts,
        app=imp_app,
        session=st_session[r],
        surface=imp_surface,
        position=c + 1,
        variant=imp_variant,
    )
    fit = world.fit_z(imp_user, imp_app)
    quality = world.app_quality[imp_app]
    popular = world.popularity_z(imp_app)
    viewed = rng.random(len(r)) < sigmoid(
        -1.6 + 0.6 * fit + 0.3 * quality + 1.0 * popular - 0.12 * c + np.where(is_search[r], 0.6, 0.0)
    )
    view_ts = imp_ts + rng.integers(3, 60, len(r))
    v = np.flatnonzero(viewed)
    out.add(
        "app_view",
        imp_user[v],
        view_ts[v],
        app=imp_app[v],
        session=st_session[r[v]],
        surface=imp_surface[v],
        position=c[v] + 1,
        variant=imp_variant[v],
    )
    installs = v[
        rng.random(len(v)) < _install_probability(world, imp_user[v], imp_app[v], fit[v], quality[v])
    ]
    candidates.append(
        (
            imp_user[installs],
            imp_app[installs],
            view_ts[installs] + rng.integers(10, 90, len(installs)),
            st_session[r[installs]],
            imp_surface[installs],
            c[installs] + 1,
            imp_variant[installs],
        )
    )

    # ------------------------------------------------------ push notifications
    notified = users[rng.random(n) < NOTIFICATION_RATE]
    n_notified = len(notified)
    note_request = SlateRequest(
        day,
        date.isoformat(),
        notified,
        np.full(n_notified, SURFACE_INDEX["notification"]),
        np.full(n_notified, -1),
        1,
    )
    note_app = clean_slates(world, note_request, policy(note_request, world, rng))[:, 0]
    note_variant = out.variant_codes(slate_variants(policy, note_request))
    keep = note_app >= 0
    notified, note_app, note_variant = notified[keep], note_app[keep], note_variant[keep]
    local_send = np.where(rng.random(len(notified)) < 0.5, 10, 19) * 3600 + rng.integers(
        0, 900, len(notified)
    )
    sent_ts = day_start + np.minimum(
        _local_to_utc(world, notified, local_send, offsets), SECONDS_PER_DAY - 7200
    )
    out.add(
        "notification_sent",
        notified,
        sent_ts,
        app=note_app,
        surface=SURFACE_INDEX["notification"],
        variant=note_variant,
    )
    fit = world.fit_z(notified, note_app)
    quality = world.app_quality[note_app]
    p_open = sigmoid(-2.2 + 0.6 * fit + 0.3 * quality) * np.minimum(1.0, 0.3 + world.user_activity[notified])
    o = np.flatnonzero(rng.random(len(notified)) < p_open)
    open_ts = sent_ts[o] + rng.integers(60, 3600, len(o))
    open_session = rng.integers(1, 1 << 48, len(o))
    out.add(
        "notification_open",
        notified[o],
        open_ts,
        app=note_app[o],
        session=open_session,
        surface=SURFACE_INDEX["notification"],
    )
    note_view_ts = open_ts + rng.integers(2, 20, len(o))
    out.add(
        "app_view",
        notified[o],
        note_view_ts,
        app=note_app[o],
        session=open_session,
        surface=SURFACE_INDEX["notification"],
        position=1,
        variant=note_variant[o],
    )
    installs = rng.random(len(o)) < _install_probability(world, notified[o], note_app[o], fit[o], quality[o])
    candidates.append(
        (
            notified[o][installs],
            note_app[o][installs],
            note_view_ts[installs] + rng.integers(10, 60, int(installs.sum())),
            open_session[installs],
            np.full(int(installs.sum()), SURFACE_INDEX["notification"]),
            np.ones(int(installs.sum()), np.int64),
            note_variant[o][installs],
        )
    )

    # ---------------------------------------------------------------- installs
    i_user, i_app, i_ts, i_session, i_surface, i_position, i_variant = (
        np.concatenate(parts) for parts in zip(*candidates, strict=True)
    )
    i_ts = np.minimum(i_ts, day_end)
    pair = i_user * world.app_category.shape[0] + i_app
    fresh = ~world.is_installed(i_user, i_app) & ~np.isin(pair, uninstalled_today)
    # The same app found twice today is installed once (the earliest).
    order = np.lexsort((i_ts, pair))
    first = np.ones(len(order), bool)
    first[1:] = pair[order][1:] != pair[order][:-1]
    chosen = order[first & fresh[order]]
    chosen = chosen[np.argsort(i_ts[chosen], kind="stable")]
    i_user, i_app, i_ts, i_session, i_surface, i_position, i_variant = (
        x[chosen] for x in (i_user, i_app, i_ts, i_session, i_surface, i_position, i_variant)
    )
    affinity = world.usage_affinity(i_user, i_app, rng)
    evictions: dict[tuple[int, int], int] = {}
    evicted_rows: list[tuple[int, int, int]] = []
    for u, a, t, w in zip(i_user.tolist(), i_app.tolist(), i_ts.tolist(), affinity.tolist(), strict=True):
        evicted = world.install(u, a, w)
        if evicted >= 0:
            evictions[(u, evicted)] = t + 1
            evicted_rows.append((u, evicted, t + 1))
    out.add(
        "install",
        i_user,
        i_ts,
        app=i_app,
        session=i_session,
        surface=i_surface,
        position=i_position,
        variant=i_variant,
    )
    if evicted_rows:
        ev = np.array(evicted_rows, dtype=np.int64)
        out.add("uninstall", ev[:, 0], np.minimum(ev[:, 2], day_end), app=ev[:, 1])
    paid = world.app_price[i_app] > 0
    # A paid install's purchase is attributed to the slate the install came from.
    out.add(
        "purchase",
        i_user[paid],
        np.minimum(i_ts[paid] + 3, day_end),
        app=i_app[paid],
        session=i_session[paid],
        amount=world.app_price[i_app[paid]],
        surface=i_surface[paid],
        position=i_position[paid],
        variant=i_variant[paid],
    )
    first_open = rng.random(len(i_user)) < 0.75
    f_user, f_app = i_user[first_open], i_app[first_open]
    f_ts = np.minimum(i_ts[first_open] + rng.integers(20, 120, len(f_user)), day_end)
    f_duration = _durations(world, f_user, f_app, rng)
    _add_opens(out, evictions, f_user, f_app, f_ts, i_session[first_open], f_duration)

    # ------------------------------------------------------------------ usage
    us = np.flatnonzero(~store)
    opens_per_session = 1 + rng.poisson(2.2, len(us))
    o_session_index = np.repeat(us, opens_per_session)
    o_user = s_user[o_session_index]
    slot = categorical_rows(affinity_now[o_user - lo], rng)
    o_app = installed_now[o_user - lo, slot].astype(np.int64)
    o_duration = _durations(world, o_user, o_app, rng)
    # Opens of one session follow each other: each starts after the previous one ends plus a gap.
    step = o_duration + rng.integers(5, 90, len(o_user))
    elapsed = np.cumsum(step) - step
    session_first = np.repeat(np.cumsum(opens_per_session) - opens_per_session, opens_per_session)
    offset = elapsed - elapsed[session_first] if len(elapsed) else elapsed
    o_ts = np.minimum(s_start[o_session_index] + np.round(offset).astype(np.int64), day_end)
    _add_opens(out, evictions, o_user, o_app, o_ts, s_session[o_session_index], o_duration)
    fit = world.fit_z(o_user, o_app)
    buyer_rate = IAP_RATE * (1.0 - world.user_price_sensitivity[o_user]) ** 2 * (1.0 + np.maximum(fit, 0.0))
    iap = np.flatnonzero(rng.random(len(o_user)) < buyer_rate)
    out.add(
        "purchase",
        o_user[iap],
        np.minimum(o_ts[iap] + rng.integers(10, 300, len(iap)), day_end),
        app=o_app[iap],
        session=s_session[o_session_index[iap]],
        amount=rng.choice(_IAP_AMOUNTS, size=len(iap), p=_IAP_P),
    )
    rated = np.flatnonzero(rng.random(len(o_user)) < RATING_RATE)
    stars = np.clip(
        np.round(
            3.0 + 0.55 * fit[rated] + 0.6 * world.app_quality[o_app[rated]] + rng.normal(0, 0.8, len(rated))
        ),
        1,
        5,
    ).astype(np.int64)
    out.add(
        "rating",
        o_user[rated],
        np.minimum(o_ts[rated] + np.round(o_duration[rated]).astype(np.int64), day_end),
        app=o_app[rated],
        session=s_session[o_session_index[rated]],
        rating=stars,
    )
    return out.finish()


def _install_probability(
    world: SimWorld, users: np.ndarray, apps: np.ndarray, fit: np.ndarray, quality: np.ndarray
) -> np.ndarray:
    """Chance a viewed app gets installed: taste fit, quality and popularity raise it, a price lowers it
    in proportion to the user's price sensitivity."""
    base = sigmoid(-0.8 + 0.75 * fit + 0.4 * quality + 1.1 * world.popularity_z(apps))
    paid = world.app_price[apps] > 0
    return base * np.where(paid, 0.4 * (1.0 - world.user_price_sensitivity[users]), 1.0)


def _durations(world: SimWorld, users: np.ndarray, apps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """App usage session lengths in seconds (3 s .. 4 h, 0.1 s resolution); better fit => longer."""
    mu = np.log(140.0) + 0.25 * world.fit_z(users, apps) + 0.15 * world.app_quality[apps]
    return np.clip(np.round(rng.lognormal(mu, 0.9), 1), 3.0, 14_400.0)


def _add_opens(
    out: _Buffer,
    evictions: dict[tuple[int, int], int],
    users: np.ndarray,
    apps: np.ndarray,
    ts: np.ndarray,
    sessions: np.ndarray,
    durations: np.ndarray,
) -> None:
    """Add app_open events, skipping opens of an app after it was evicted (uninstalled) today."""
    if evictions and len(users):
        keep = np.ones(len(users), bool)
        suspects = np.flatnonzero(np.isin(users, np.array([u for u, _ in evictions])))
        keep[suspects] = [
            evictions.get((u, a), 1 << 62) > t
            for u, a, t in zip(
                users[suspects].tolist(), apps[suspects].tolist(), ts[suspects].tolist(), strict=True
            )
        ]
        users, apps, ts, sessions, durations = (
            users[keep],
            apps[keep],
            ts[keep],
            sessions[keep],
            durations[keep],
        )
    out.add("app_open", users, ts, app=apps, session=sessions, duration=durations)
