"""State of the simulated store: the catalogue, the users, their hidden traits and installs.

All state lives in preallocated numpy arrays indexed by app index (``a000123`` is
index 123) and user index (``u0000123`` is index 123), sized for the whole window,
so a day's simulation is vectorised and memory does not depend on how many days
have been generated (events are never kept here).
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from jobs import columns as C
from personalization.generator.presets import ScalePreset
from personalization.generator.vocabulary import (
    AGE_RATINGS,
    APP_LANGUAGES,
    CATEGORIES,
    CATEGORY_WORDS,
    CITIES,
    COUNTRIES,
    COUNTRY_CODES,
    DENY_REASONS,
    DEVELOPER_KINDS,
    DEVELOPER_WORDS,
    DIURNAL_WEIGHTS,
    DOWNLOAD_BUCKETS,
    GAME_WORDS,
    GENDERS,
    GENERIC_WORDS,
    NAME_PREFIXES,
    NAME_SUFFIXES,
)

N_CATEGORIES = len(CATEGORIES)
N_COUNTRIES = len(COUNTRIES)
#: Installed apps remembered per user; installing into a full row evicts (uninstalls) one.
INSTALL_SLOTS = 24
#: Injected unknown app ids are drawn at or above this index, beyond any catalogue.
UNKNOWN_APP_BASE = 900_000
#: Spread (log scale) of the apps' hidden popularity: large => a few apps get most exposure.
POPULARITY_SIGMA = 2.6
#: churn day of users who never churn.
NO_CHURN = 1 << 30
#: Consent columns of ``SimWorld.consent``, in order.
CONSENT_COLUMNS = (C.CONSENT_BEHAVIORAL, C.CONSENT_LOCATION, C.CONSENT_DEMOGRAPHICS, C.CONSENT_THIRD_PARTY)
#: Probability that a new user grants each consent at signup (same order).
CONSENT_GRANT_RATES = (0.96, 0.78, 0.85, 0.40)

_GAME = np.array([name.startswith("game_") for name in CATEGORIES])
#: Baseline share of interest in each category across the population (Dirichlet mean).
_CATEGORY_BASE = np.array(
    [
        1.4
        if name
        in (
            "game_casual",
            "game_puzzle",
            "social",
            "photo_video",
            "music",
            "communication",
            "entertainment",
            "shopping",
        )
        else 0.6
        if name in ("medical", "business", "kids", "weather")
        else 1.0
        for name in CATEGORIES
    ]
)
#: Sum of the Dirichlet parameters: small => each user cares about a few categories.
_TASTE_CONCENTRATION = 6.0
_AGE_GROUP_GAME_FACTOR = np.array([2.0, 1.6, 1.0, 0.8, 0.6, 0.5])
_SERIOUS = np.array(
    [name in ("news", "weather", "finance", "medical", "business", "books") for name in CATEGORIES]
)
_AGE_GROUP_SERIOUS_FACTOR = np.array([0.3, 0.6, 1.0, 1.3, 1.6, 1.8])
_AGE_GROUP_SHARES = np.array([0.08, 0.20, 0.28, 0.20, 0.13, 0.11])
#: Maximum app age rating each age group may see (13-17 cannot see 17+ apps).
AGE_GROUP_MAX_RATING = np.array(
    [min(12, C.AGE_GROUP_MIN_AGE[g]) if C.AGE_GROUP_MIN_AGE[g] < 17 else 17 for g in C.AGE_GROUPS],
    dtype=np.int8,
)
_DEVICE_INDEX = {name: i for i, name in enumerate(C.DEVICES)}
_COUNTRY_INDEX = {code: i for i, code in enumerate(COUNTRY_CODES)}
_CITY_COUNTRY = np.array([_COUNTRY_INDEX[city.country] for city in CITIES], dtype=np.int8)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, elementwise."""
    return 1.0 / (1.0 + np.exp(-x))


def app_id(index: int) -> str:
    """``a000123`` for app index 123."""
    return f"a{index:06d}"


def user_id(index: int) -> str:
    """``u0000123`` for user index 123."""
    return f"u{index:07d}"


def categorical_rows(probabilities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row of a (n, k) matrix of non-negative weights; returns column indices."""
    cumulative = np.cumsum(probabilities, axis=1)
    threshold = rng.random(len(probabilities)) * cumulative[:, -1]
    return np.minimum((cumulative <= threshold[:, None]).sum(axis=1), probabilities.shape[1] - 1)


class WeightedSampler:
    """Draws app indices with probability proportional to a weight, with replacement."""

    def __init__(self, apps: np.ndarray, weights: np.ndarray):
        keep = weights > 0
        self.apps = apps[keep]
        self.cdf = np.cumsum(weights[keep])

    def __len__(self) -> int:
        return len(self.apps)

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` app indices (all -1 when the candidate set is empty)."""
        if len(self.apps) == 0:
            rng.random(n)  # consume the same randomness either way (keeps streams aligned)
            return np.full(n, -1, dtype=np.int64)
        picks = np.searchsorted(self.cdf, rng.random(n) * self.cdf[-1], side="right")
        return self.apps[np.minimum(picks, len(self.apps) - 1)].astype(np.int64)


class SimWorld:
    """Catalogue, users and hidden traits of one generated world (see module docstring)."""

    def __init__(self, preset: ScalePreset, start_date: dt.date, rng: np.random.Generator):
        if preset.total_apps >= UNKNOWN_APP_BASE:
            raise ValueError(
                f"at most {UNKNOWN_APP_BASE - 1} apps are supported, preset has {preset.total_apps}"
            )
        if preset.total_users >= 10**7:
            raise ValueError("at most 9,999,999 users are supported (u + 7 digits)")
        self.preset = preset
        self.start_date = start_date
        cap_apps, cap_users = preset.total_apps, preset.total_users

        # -------------------------------------------------------------- catalogue
        self.n_apps = 0
        self.app_category = np.zeros(cap_apps, np.int16)
        self.app_quality = np.zeros(cap_apps, np.float32)  # hidden, standard normal
        self.app_popularity = np.zeros(cap_apps, np.float64)  # hidden exposure weight, log-normal
        self.app_price = np.zeros(cap_apps, np.float64)  # USD
        self.app_release_day = np.zeros(cap_apps, np.int32)  # days since start_date (< 0: before)
        self.app_age_rating = np.zeros(cap_apps, np.int8)
        self.app_available = np.zeros((cap_apps, N_COUNTRIES), bool)
        self.app_denied = np.zeros(cap_apps, bool)
        self.featured = np.zeros(0, np.int64)
        # Developers own several apps with Zipf-like shares.
        n_developers = max(8, cap_apps // 4)
        self.developer_names = [
            f"{DEVELOPER_WORDS[i % len(DEVELOPER_WORDS)]}"
            f"{DEVELOPER_WORDS[(i // len(DEVELOPER_WORDS) * 7 + 3) % len(DEVELOPER_WORDS)].lower()} "
            f"{DEVELOPER_KINDS[(i // len(DEVELOPER_WORDS)) % len(DEVELOPER_KINDS)]}"
            for i in range(n_developers)
        ]
        developer_weights = 1.0 / np.arange(1, n_developers + 1) ** 1.1
        self.developer_cdf = np.cumsum(developer_weights / developer_weights.sum())
        self.developer_order = rng.permutation(n_developers)  # rank -> developer index

        # ------------------------------------------------------------------ users
        self.n_users = 0
        self.user_country = np.zeros(cap_users, np.int8)
        self.user_city = np.zeros(cap_users, np.int16)
        self.user_device = np.zeros(cap_users, np.int8)
        self.user_age_group = np.zeros(cap_users, np.int8)
        self.user_signup_day = np.zeros(cap_users, np.int32)
        self.user_ip = np.zeros(cap_users, np.uint32)
        # hidden traits (written to Lake.sim_truth(), never to raw)
        self.user_taste = np.zeros((cap_users, N_CATEGORIES), np.float32)  # Dirichlet, rows sum to 1
        self.user_activity = np.zeros(cap_users, np.float32)  # expected sessions/day before scaling
        self.user_price_sensitivity = np.zeros(cap_users, np.float32)  # 0 (buys freely) .. 1
        self.user_preferred_hour = np.zeros(cap_users, np.int8)  # local hour 0..23
        self.user_churn_propensity = np.zeros(cap_users, np.float32)  # 0..1
        self.user_churn_day = np.full(cap_users, NO_CHURN, np.int32)  # days since start_date
        # current consent state (changes through consent_change events)
        self.consent = np.zeros((cap_users, len(CONSENT_COLUMNS)), bool)
        # installed apps (-1 empty) and how much the user uses each (relative weight > 0)
        self.installed = np.full((cap_users, INSTALL_SLOTS), -1, np.int32)
        self.install_affinity = np.zeros((cap_users, INSTALL_SLOTS), np.float32)

    # ---------------------------------------------------------------- helpers
    def date_of(self, day: int) -> str:
        """ISO date of a day index relative to the start date."""
        return (self.start_date + dt.timedelta(days=int(day))).isoformat()

    def fit_z(self, users: np.ndarray, apps: np.ndarray) -> np.ndarray:
        """How well each app's category fits each user's hidden taste, log scale in [-3, 3] (0 = average)."""
        taste = self.user_taste[users, self.app_category[apps]]
        return np.clip(np.log(taste * N_CATEGORIES + 1e-6), -3.0, 3.0)

    def popularity_z(self, apps: np.ndarray) -> np.ndarray:
        """An app's hidden popularity on a standard-normal scale (word of mouth, brand)."""
        return np.log(self.app_popularity[apps]) / POPULARITY_SIGMA

    def can_see(self, users: np.ndarray, apps: np.ndarray, day: int) -> np.ndarray:
        """Whether each app may be shown to each user on ``day``: a real catalogue app,
        released by then, available in the user's country and allowed for the user's age."""
        ok = (apps >= 0) & (apps < self.n_apps)
        safe_apps = np.where(ok, apps, 0)
        ok &= self.app_release_day[safe_apps] <= day
        ok &= self.app_available[safe_apps, self.user_country[users]]
        ok &= self.app_age_rating[safe_apps] <= AGE_GROUP_MAX_RATING[self.user_age_group[users]]
        return ok

    def is_installed(self, users: np.ndarray, apps: np.ndarray) -> np.ndarray:
        """Whether each (user, app) pair is currently installed."""
        return (self.installed[users] == apps[:, None]).any(axis=1)

    # -------------------------------------------------------------- catalogue
    def add_apps(self, release_days: np.ndarray, rng: np.random.Generator) -> list[dict]:
        """Create apps released on the given day indices; returns their raw records."""
        n = len(release_days)
        lo, hi = self.n_apps, self.n_apps + n
        index = np.arange(lo, hi)
        category = rng.choice(N_CATEGORIES, size=n, p=_CATEGORY_BASE / _CATEGORY_BASE.sum())
        paid = rng.random(n) < np.where(_GAME[category], 0.12, 0.16)
        # Paid apps reach far fewer people than free ones.
        log_popularity = rng.normal(0.0, POPULARITY_SIGMA, n) - np.where(paid, 0.8 * POPULARITY_SIGMA, 0.0)
        quality = 0.35 * log_popularity / POPULARITY_SIGMA + np.sqrt(1 - 0.35**2) * rng.normal(0.0, 1.0, n)
        price = np.where(paid, np.maximum(0.99, np.round(rng.lognormal(np.log(3.0), 0.6, n)) - 0.01), 0.0)
        rating = np.clip(np.round(3.9 + 0.45 * quality + rng.normal(0.0, 0.2, n), 1), 1.0, 5.0)
        bucket = np.digitize(log_popularity / POPULARITY_SIGMA, [-1.2, -0.3, 0.5, 1.3, 2.1])
        age_probs = np.tile([0.55, 0.15, 0.2, 0.1], (n, 1))
        rough = np.isin(
            category,
            [
                CATEGORIES.index(c)
                for c in ("game_action", "game_role_playing", "game_strategy", "social", "entertainment")
            ],
        )
        age_probs[rough] = [0.15, 0.2, 0.4, 0.25]
        age_probs[category == CATEGORIES.index("kids")] = [1.0, 0.0, 0.0, 0.0]
        age_rating = np.array(AGE_RATINGS)[categorical_rows(age_probs, rng)]
        everywhere = rng.random(n) < 0.82
        restricted = rng.random((n, N_COUNTRIES)) < 0.35
        restricted[np.arange(n), rng.integers(0, N_COUNTRIES, n)] = True  # at least one country
        available = np.where(everywhere[:, None], True, restricted)
        languages = rng.random((n, len(APP_LANGUAGES))) < 0.3 + 0.1 * np.clip(log_popularity, 0, 4)[:, None]
        languages[:, 0] = True  # every app ships English
        developer_rank = np.minimum(
            np.searchsorted(self.developer_cdf, rng.random(n)), len(self.developer_cdf) - 1
        )
        developer = self.developer_order[developer_rank]
        text_rng_draws = rng.integers(0, 1 << 30, size=(n, 24))

        self.app_category[lo:hi] = category
        self.app_quality[lo:hi] = quality
        self.app_popularity[lo:hi] = np.exp(log_popularity)
        self.app_price[lo:hi] = price
        self.app_release_day[lo:hi] = release_days
        self.app_age_rating[lo:hi] = age_rating
        self.app_available[lo:hi] = available
        self.n_apps = hi

        records = []
        for k in range(n):
            cat = CATEGORIES[category[k]]
            words = CATEGORY_WORDS[cat]
            draws = text_rng_draws[k]
            is_game = bool(_GAME[category[k]])
            name = (
                f"{NAME_PREFIXES[draws[0] % len(NAME_PREFIXES)]} {words[draws[1] % len(words)].title()}"
                f" {NAME_SUFFIXES[draws[2] % len(NAME_SUFFIXES)]}"
            )
            own = [words[d % len(words)] for d in draws[3:13]]
            generic = [GENERIC_WORDS[d % len(GENERIC_WORDS)] for d in draws[13:17]]
            game = [GAME_WORDS[d % len(GAME_WORDS)] for d in draws[17:20]] if is_game else []
            description = (
                f"{name}: {own[0]} {own[1]} and {own[2]} {own[3]} for everyone. "
                f"{generic[0].capitalize()} {own[4]} {own[5]}, {generic[1]} {own[6]} {' '.join(game)} "
                f"with {own[7]} {own[8]} {own[9]}. {generic[2].capitalize()} and {generic[3]}."
            ).replace("  ", " ")
            tags = list(dict.fromkeys([words[draws[20 + j] % len(words)] for j in range(4)]))
            records.append(
                {
                    C.APP_ID: app_id(int(index[k])),
                    C.APP_NAME: name,
                    C.CATEGORY: cat,
                    C.DEVELOPER_ID: f"d{int(developer[k]):05d}",
                    C.DEVELOPER_NAME: self.developer_names[int(developer[k])],
                    C.PRICE: float(price[k]),
                    C.RATING: float(rating[k]),
                    C.DOWNLOADS_BUCKET: DOWNLOAD_BUCKETS[int(bucket[k])],
                    C.DESCRIPTION: description,
                    C.TAGS: tags,
                    C.RELEASE_DATE: self.date_of(int(release_days[k])),
                    C.AGE_RATING: int(age_rating[k]),
                    C.LANGUAGES: [lang for lang, on in zip(APP_LANGUAGES, languages[k], strict=True) if on],
                    C.REGIONS: [code for code, on in zip(COUNTRY_CODES, available[k], strict=True) if on],
                    C.CONTENT_TYPE: "game" if is_game else "app",
                }
            )
        return records

    def choose_editorial(
        self, rng: np.random.Generator, n_featured: int = 20, n_denied: int = 4
    ) -> tuple[list[dict], list[dict]]:
        """Pick the featured list (good, reasonably popular apps) and a small denylist."""
        apps = np.arange(self.n_apps)
        denied = rng.choice(
            apps[np.argsort(self.app_quality[: self.n_apps])[: max(n_denied * 5, 1)]],
            size=min(n_denied, self.n_apps),
            replace=False,
        )
        self.app_denied[denied] = True
        score = self.app_quality[: self.n_apps] + 0.3 * np.log(self.app_popularity[: self.n_apps])
        score = np.where(self.app_denied[: self.n_apps], -np.inf, score)
        top = apps[np.argsort(-score, kind="stable")[: max(n_featured * 3, 1)]]
        featured = rng.choice(top, size=min(n_featured, len(top)), replace=False)
        self.featured = featured.astype(np.int64)
        featured_records = [{C.APP_ID: app_id(int(a)), C.POSITION: i + 1} for i, a in enumerate(featured)]
        denied_records = [
            {C.APP_ID: app_id(int(a)), C.REASON: DENY_REASONS[int(r)]}
            for a, r in zip(np.sort(denied), rng.integers(0, len(DENY_REASONS), len(denied)), strict=True)
        ]
        return featured_records, denied_records

    # ------------------------------------------------------------------ users
    def add_users(self, signup_days: np.ndarray, rng: np.random.Generator) -> list[dict]:
        """Create users who signed up on the given day indices; returns their raw records."""
        n = len(signup_days)
        lo, hi = self.n_users, self.n_users + n
        country_w = np.array([c.weight for c in COUNTRIES])
        country = rng.choice(N_COUNTRIES, size=n, p=country_w / country_w.sum())
        city = np.zeros(n, np.int16)
        for ci in range(N_COUNTRIES):
            rows = np.flatnonzero(country == ci)
            options = np.flatnonzero(_CITY_COUNTRY == ci)
            weights = np.array([CITIES[j].weight for j in options])
            city[rows] = options[rng.choice(len(options), size=len(rows), p=weights / weights.sum())]
        ios_share = np.array([c.ios_share for c in COUNTRIES])[country]
        is_ios = rng.random(n) < ios_share
        form = rng.choice(3, size=n, p=[0.85, 0.1, 0.05])  # phone, tablet, web
        device = np.where(
            form == 2,
            _DEVICE_INDEX["web"],
            np.where(
                is_ios,
                np.where(form == 0, _DEVICE_INDEX["ios_phone"], _DEVICE_INDEX["ios_tablet"]),
                np.where(form == 0, _DEVICE_INDEX["android_phone"], _DEVICE_INDEX["android_tablet"]),
            ),
        )
        age_group = rng.choice(len(C.AGE_GROUPS), size=n, p=_AGE_GROUP_SHARES)
        gender_draw = rng.random(n)
        second_language = rng.random(n) < np.array([c.second_language_share for c in COUNTRIES])[country]
        alpha = np.tile(_CATEGORY_BASE, (n, 1))
        alpha[:, _GAME] *= _AGE_GROUP_GAME_FACTOR[age_group][:, None]
        alpha[:, _SERIOUS] *= _AGE_GROUP_SERIOUS_FACTOR[age_group][:, None]
        alpha = alpha / alpha.sum(axis=1, keepdims=True) * _TASTE_CONCENTRATION
        taste = rng.standard_gamma(alpha)  # Dirichlet rows via normalised gammas
        taste = np.maximum(taste, 1e-12)
        taste /= taste.sum(axis=1, keepdims=True)
        activity = rng.lognormal(np.log(0.8), 1.0, n)
        price_sensitivity = rng.beta(3.0, 1.5, n)
        hour_w = np.array(DIURNAL_WEIGHTS) ** 2
        preferred_hour = rng.choice(24, size=n, p=hour_w / hour_w.sum())
        churn_propensity = rng.beta(1.2, 8.0, n)
        churns = rng.random(n) < churn_propensity
        churn_offset = rng.integers(1, max(2, self.preset.days), n)
        churn_day = np.where(churns, np.maximum(signup_days, 0) + churn_offset, NO_CHURN)
        consent = rng.random((n, len(CONSENT_COLUMNS))) < np.array(CONSENT_GRANT_RATES)
        ip = rng.integers(11 << 24, 223 << 24, n, dtype=np.uint32)

        self.user_country[lo:hi] = country
        self.user_city[lo:hi] = city
        self.user_device[lo:hi] = device
        self.user_age_group[lo:hi] = age_group
        self.user_signup_day[lo:hi] = signup_days
        self.user_ip[lo:hi] = ip
        self.user_taste[lo:hi] = taste
        self.user_activity[lo:hi] = activity
        self.user_price_sensitivity[lo:hi] = price_sensitivity
        self.user_preferred_hour[lo:hi] = preferred_hour
        self.user_churn_propensity[lo:hi] = churn_propensity
        self.user_churn_day[lo:hi] = churn_day
        self.consent[lo:hi] = consent
        self.n_users = hi

        records = []
        for k in range(n):
            c = COUNTRIES[country[k]]
            place = CITIES[city[k]]
            gender = (
                None
                if gender_draw[k] < 0.45
                else GENDERS[0]
                if gender_draw[k] < 0.72
                else GENDERS[1]
                if gender_draw[k] < 0.98
                else GENDERS[2]
            )
            record = {
                C.USER_ID: user_id(lo + k),
                C.AGE_GROUP: C.AGE_GROUPS[age_group[k]],
                C.GENDER: gender,
                C.COUNTRY: c.code,
                C.REGION: place.region,
                C.CITY: place.name,
                C.LANGUAGE: c.second_language if second_language[k] else c.language,
                C.TIMEZONE: place.tz,
                C.DEVICE: C.DEVICES[device[k]],
                C.SIGNUP_DATE: self.date_of(int(signup_days[k])),
            }
            record.update({name: bool(consent[k, j]) for j, name in enumerate(CONSENT_COLUMNS)})
            records.append(record)
        return records

    def bootstrap_installs(self, users: np.ndarray, day: int, rng: np.random.Generator) -> None:
        """Give pre-existing users (with empty install rows) the apps they installed before
        the window (no events); ``users`` must be sorted."""
        n_installs = np.minimum(
            rng.poisson(1.0 + 3.0 * np.minimum(self.user_activity[users], 3.0)), INSTALL_SLOTS - 6
        )
        owners = np.repeat(users, n_installs)
        if len(owners) == 0:
            return
        categories = categorical_rows(self.user_taste[owners], rng)
        apps = self.sample_in_categories(categories, day, rng, exponent=0.3)
        ok = self.can_see(owners, apps, day)
        owners, apps = owners[ok], apps[ok]
        # Rows are empty before the window, so the k-th distinct app of a user goes to slot k.
        pair = owners * self.app_category.shape[0] + apps
        _, first = np.unique(pair, return_index=True)
        first = np.sort(first)
        owners, apps = owners[first], apps[first]
        group_start = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
        slot = np.arange(len(owners)) - np.repeat(group_start, np.diff(np.r_[group_start, len(owners)]))
        self.installed[owners, slot] = apps
        self.install_affinity[owners, slot] = self.usage_affinity(owners, apps, rng)

    def sample_in_categories(
        self, categories: np.ndarray, day: int, rng: np.random.Generator, exponent: float = 1.0
    ) -> np.ndarray:
        """One app per requested category, ∝ popularity**exponent among apps released by ``day``."""
        apps = np.full(len(categories), -1, np.int64)
        released = np.flatnonzero(self.app_release_day[: self.n_apps] <= day)
        for cat in np.unique(categories):
            rows = np.flatnonzero(categories == cat)
            in_cat = released[self.app_category[released] == cat]
            apps[rows] = WeightedSampler(in_cat, self.app_popularity[in_cat] ** exponent).draw(len(rows), rng)
        return apps

    def usage_affinity(self, users: np.ndarray, apps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Relative usage weight (> 0) of an installed app: better fit and quality => used more."""
        return (
            np.exp(0.5 * self.fit_z(users, apps) + 0.3 * self.app_quality[apps])
            * rng.lognormal(0.0, 0.5, len(users))
        ).astype(np.float32)

    def install(self, user: int, app: int, affinity: float) -> int:
        """Put ``app`` into a free slot of ``user``; returns the evicted app (-1 if none).

        A full row evicts the least-used app: the caller emits its uninstall event.
        """
        row = self.installed[user]
        free = np.flatnonzero(row < 0)
        evicted = -1
        slot = int(free[0]) if len(free) else int(np.argmin(self.install_affinity[user]))
        if not len(free):
            evicted = int(row[slot])
        row[slot] = app
        self.install_affinity[user, slot] = affinity
        return evicted

    def uninstall(self, user: int, app: int) -> None:
        """Remove ``app`` from ``user``'s installed slots."""
        slots = np.flatnonzero(self.installed[user] == app)
        self.installed[user, slots] = -1
        self.install_affinity[user, slots] = 0.0

    # ------------------------------------------------------------- sim truth
    def traits_table(self):
        """Hidden user traits as a pyarrow Table (see ``Lake.sim_truth()``)."""
        import pyarrow as pa

        n = self.n_users
        churn_dates = [
            None if d == NO_CHURN else self.date_of(int(d)) for d in self.user_churn_day[:n].tolist()
        ]
        taste = pa.FixedSizeListArray.from_arrays(
            pa.array(self.user_taste[:n].astype(np.float64).ravel()), N_CATEGORIES
        )
        table = pa.table(
            {
                C.USER_ID: pa.array([user_id(i) for i in range(n)], pa.string()),
                "taste": taste.cast(pa.list_(pa.float64())),
                "activity": pa.array(self.user_activity[:n].astype(np.float64) * self.preset.activity_scale),
                "price_sensitivity": pa.array(self.user_price_sensitivity[:n].astype(np.float64)),
                "preferred_hour": pa.array(self.user_preferred_hour[:n].astype(np.int32)),
                "churn_propensity": pa.array(self.user_churn_propensity[:n].astype(np.float64)),
                "churn_date": pa.array(churn_dates, pa.string()),
            }
        )
        return table.replace_schema_metadata({"taste_categories": ",".join(CATEGORIES)})
