"""Raw event lines: JSON formatting, late arrivals and injected bad records.

Each injected bad record carries exactly one defect, chosen so that the validation
job's first matching reason code (``jobs.columns.QUARANTINE_REASONS`` order) is the
injected one:

- ``malformed_json``: a valid line cut short (never a complete object) or ``key=value`` text;
- ``oversized_field``: a valid search event whose ``query`` is ~10 KB;
- ``missing_user_id``: ``user_id`` removed, null or empty;
- ``future_timestamp``: ``ts`` moved 3-6 days past the landing day;
- ``unknown_app_id``: an app event whose ``app_id`` (``a9xxxxx``) is beyond any catalogue;
- ``negative_duration``: an ``app_open`` with ``duration_s`` < 0;
- ``duplicate_event_id``: a verbatim copy of a valid line landed earlier in the same
  file or in the previous landing date's files.

All non-duplicate bad records get a fresh event_id, so they never collide with a valid line.
"""

from __future__ import annotations

import json

import numpy as np

from jobs import columns as C
from personalization.generator.simulate import ETYPE, DayEvents
from personalization.generator.vocabulary import CATEGORIES, CATEGORY_WORDS, CITIES
from personalization.generator.world import UNKNOWN_APP_BASE, SimWorld

#: Reason codes the generator injects, in precedence order.
INJECTED_REASONS: tuple[str, ...] = (
    "malformed_json",
    "oversized_field",
    "missing_user_id",
    "future_timestamp",
    "unknown_app_id",
    "negative_duration",
    "duplicate_event_id",
)
#: Share of a day's valid events that arrive one landing date late.
LATE_RATE = 0.005
#: Share of injected duplicates copied from the previous landing date (the rest: same date).
PREVIOUS_DAY_DUPLICATE_SHARE = 0.5
#: Size of an oversized query in bytes (validation.max_field_bytes defaults to 2048).
OVERSIZED_QUERY_BYTES = 10_000

_FORMAT_BLOCK = 65_536
_APP_EVENT_CODES = np.array([ETYPE[name] for name in C.APP_EVENT_TYPES])
_UUID_VARIANT = {f"{i:x}": "89ab"[i & 3] for i in range(16)}


def dumps(record: dict) -> str:
    """Compact JSON for one record (UTF-8 text kept as is)."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def event_ids(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` random version-4 UUID strings drawn from ``rng`` (deterministic)."""
    digits = rng.bytes(16 * n).hex()
    ids = []
    for i in range(n):
        h = digits[32 * i : 32 * i + 32]
        ids.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_UUID_VARIANT[h[16]]}{h[17:20]}-{h[20:]}")
    return ids


class LineFormatter:
    """Turns columnar events into JSON lines in ``RAW_EVENT_FIELDS`` order (absent fields omitted)."""

    def __init__(self, world: SimWorld):
        self.world = world
        # The user context (tz, device, country, city) depends only on (city, device).
        self._context = [
            f'"tz":{dumps(city.tz)},"device":{dumps(device)},"country":{dumps(city.country)},"city":{dumps(city.name)}'
            for city in CITIES
            for device in C.DEVICES
        ]

    def format(self, events: DayEvents, lo: int, hi: int, rng: np.random.Generator) -> list[str]:
        """One JSON line per event, for events of users ``lo..hi-1``."""
        world = self.world
        if len(events) == 0:
            return []
        chunk = np.arange(lo, hi)
        user_ids = [f"u{u:07d}" for u in chunk.tolist()]
        ip = world.user_ip[lo:hi]
        ips = [
            f"{a}.{b}.{c}.{d}"
            for a, b, c, d in zip(
                (ip >> 24).tolist(),
                ((ip >> 16) & 255).tolist(),
                ((ip >> 8) & 255).tolist(),
                (ip & 255).tolist(),
                strict=True,
            )
        ]
        context_index = (
            world.user_city[lo:hi].astype(np.int64) * len(C.DEVICES) + world.user_device[lo:hi]
        ).tolist()
        contexts = [self._context[k] for k in context_index]
        lines: list[str] = []
        # Blocks bound the temporary Python objects (tolist() of every column) to one block.
        for start in range(0, len(events), _FORMAT_BLOCK):
            block = slice(start, start + _FORMAT_BLOCK)
            lines.extend(self._format_block(events, block, lo, user_ids, ips, contexts, rng))
        return lines

    @staticmethod
    def _format_block(
        events: DayEvents,
        block: slice,
        lo: int,
        user_ids: list[str],
        ips: list[str],
        contexts: list[str],
        rng: np.random.Generator,
    ) -> list[str]:
        types, surfaces, consent_types, queries = C.EVENT_TYPES, C.SURFACES, C.CONSENT_TYPES, events.queries
        variants = [dumps(tag) for tag in events.variants]
        ts_text = np.datetime_as_string(events.ts[block].astype("datetime64[s]"), unit="s").tolist()
        ids = event_ids(len(ts_text), rng)
        lines = []
        for i, (t, u, a, ts, s, sf, pos, q, amt, dur, rat, ct, cv, var) in enumerate(
            zip(
                events.etype[block].tolist(),
                (events.user[block] - lo).tolist(),
                events.app[block].tolist(),
                ts_text,
                events.session[block].tolist(),
                events.surface[block].tolist(),
                events.position[block].tolist(),
                events.query[block].tolist(),
                events.amount[block].tolist(),
                events.duration[block].tolist(),
                events.rating[block].tolist(),
                events.consent_type[block].tolist(),
                events.consent_value[block].tolist(),
                events.variant[block].tolist(),
                strict=True,
            )
        ):
            parts = [f'{{"event_id":"{ids[i]}","event_type":"{types[t]}","user_id":"{user_ids[u]}"']
            if a >= 0:
                parts.append(f',"app_id":"a{a:06d}"')
            parts.append(f',"ts":"{ts}Z",{contexts[u]}')
            if s >= 0:
                parts.append(f',"session_id":"s{s:012x}"')
            if sf >= 0:
                parts.append(f',"surface":"{surfaces[sf]}"')
            if pos > 0:
                parts.append(f',"position":{pos}')
            parts.append(f',"variant":{variants[var]}' if var >= 0 else ',"variant":null')
            if q >= 0:
                parts.append(f',"query":{dumps(queries[q])}')
            if amt == amt:  # not NaN
                parts.append(f',"amount":{amt!r}')
            if dur == dur:
                parts.append(f',"duration_s":{dur!r}')
            if rat > 0:
                parts.append(f',"rating_value":{rat}')
            parts.append(f',"ip":"{ips[u]}"')
            if ct >= 0:
                parts.append(
                    f',"consent_type":"{consent_types[ct]}","consent_value":{"true" if cv else "false"}'
                )
            parts.append("}")
            lines.append("".join(parts))
        return lines


def split_late(
    lines: list[str], etypes: np.ndarray, rate: float, rng: np.random.Generator
) -> tuple[list[str], np.ndarray, list[str]]:
    """Pick about ``rate`` of a day's (time-sorted) lines to arrive one landing date late.

    Later events of the day are likelier to be late (a device uploads after midnight).
    Returns (lines that stay, their event types, late lines).
    """
    n_late = int(round(rate * len(lines)))
    if n_late == 0:
        return lines, etypes, []
    weights = np.arange(1, len(lines) + 1, dtype=np.float64)
    late = np.sort(rng.choice(len(lines), size=n_late, replace=False, p=weights / weights.sum()))
    stays = np.ones(len(lines), bool)
    stays[late] = False
    kept = [line for line, keep in zip(lines, stays.tolist(), strict=True) if keep]
    return kept, etypes[stays], [lines[i] for i in late.tolist()]


def _interleave(base: list[str], extra: list[str], positions: np.ndarray) -> list[str]:
    """Insert ``extra[j]`` before ``base[positions[j]]`` (at the end when equal to len(base));
    several extras at one position keep their order."""
    if not extra:
        return list(base)
    keys = np.concatenate([2 * np.arange(len(base)) + 1, 2 * np.asarray(positions, dtype=np.int64)])
    tiebreak = np.concatenate([np.zeros(len(base), np.int64), np.arange(len(extra))])
    everything = base + extra
    return [everything[i] for i in np.lexsort((tiebreak, keys)).tolist()]


def merge_late(own: list[str], late: list[str], rng: np.random.Generator) -> list[str]:
    """Scatter the previous day's late lines among today's lines."""
    return _interleave(own, late, rng.integers(0, len(own) + 1, len(late)))


def _oversized_query(rng: np.random.Generator) -> str:
    words = CATEGORY_WORDS[CATEGORIES[int(rng.integers(0, len(CATEGORIES)))]]
    draws = rng.integers(0, len(words), OVERSIZED_QUERY_BYTES // 4).tolist()
    text = " ".join(words[d] for d in draws)
    return text[:OVERSIZED_QUERY_BYTES].rstrip()


def _bad_record(reason: str, template: str, new_id: str, rng: np.random.Generator) -> str:
    """A copy of a valid line (fresh event_id) carrying exactly the defect of ``reason``."""
    record = json.loads(template)
    record[C.EVENT_ID] = new_id
    if reason == "malformed_json":
        if rng.random() < 0.25:
            return f"event_id={new_id}&event_type={record[C.EVENT_TYPE]}&ts={record[C.TS]}"
        text = dumps(record)
        cut = int(rng.integers(max(12, len(text) // 4), max(13, int(len(text) * 0.85))))
        return text[:cut]
    if reason == "oversized_field":
        record = {
            key: value
            for key, value in record.items()
            if key
            not in (
                C.APP_ID,
                C.POSITION,
                C.QUERY,
                C.AMOUNT,
                C.DURATION_S,
                C.RATING_VALUE,
                C.CONSENT_TYPE,
                C.CONSENT_VALUE,
            )
        }
        record[C.EVENT_TYPE] = "search"
        record[C.SURFACE] = "search"
        record[C.QUERY] = _oversized_query(rng)
        return dumps(record)
    if reason == "missing_user_id":
        variant = int(rng.integers(0, 3))
        if variant == 0:
            del record[C.USER_ID]
        else:
            record[C.USER_ID] = None if variant == 1 else ""
        return dumps(record)
    if reason == "future_timestamp":
        ts = np.datetime64(record[C.TS].rstrip("Z"), "s") + np.timedelta64(
            int(rng.integers(3 * 86_400, 7 * 86_400)), "s"
        )
        record[C.TS] = f"{ts}Z"
        return dumps(record)
    if reason == "unknown_app_id":
        record[C.APP_ID] = f"a{UNKNOWN_APP_BASE + int(rng.integers(0, 100_000)):06d}"
        return dumps(record)
    if reason == "negative_duration":
        record[C.DURATION_S] = -float(np.round(rng.uniform(1.0, 900.0), 1))
        return dumps(record)
    raise ValueError(reason)


def inject_bad_records(
    valid: list[str],
    templates: list[str],
    template_types: np.ndarray,
    rate: float,
    previous_pool: list[str],
    rng: np.random.Generator,
) -> tuple[list[str], dict[str, int]]:
    """Mix bad records into ``valid`` so they make up ``rate`` of the returned lines.

    ``templates`` are today's own valid lines (ts on the landing date) with their event
    types; bad records are derived from them. Returns (all lines, count per reason).
    """
    counts = dict.fromkeys(INJECTED_REASONS, 0)
    if rate <= 0 or not templates:
        return list(valid), counts
    n_bad = int(round(len(valid) * rate / (1.0 - rate)))
    per_reason = np.full(len(INJECTED_REASONS), n_bad // len(INJECTED_REASONS))
    per_reason[rng.choice(len(INJECTED_REASONS), n_bad % len(INJECTED_REASONS), replace=False)] += 1
    needs = {
        "unknown_app_id": np.flatnonzero(np.isin(template_types, _APP_EVENT_CODES)),
        "negative_duration": np.flatnonzero(template_types == ETYPE["app_open"]),
    }
    extra: list[str] = []
    positions: list[int] = []
    n_valid = len(valid)
    for reason, count in zip(INJECTED_REASONS, per_reason.tolist(), strict=True):
        if reason == "duplicate_event_id":
            from_previous = min(int(count * PREVIOUS_DAY_DUPLICATE_SHARE), len(previous_pool))
            for j in (
                rng.choice(len(previous_pool), from_previous, replace=False).tolist() if from_previous else []
            ):
                extra.append(previous_pool[j])
                positions.append(int(rng.integers(0, n_valid + 1)))
            same_day = min(count - from_previous, n_valid)
            for source in rng.choice(n_valid, same_day, replace=False).tolist():
                extra.append(valid[source])
                positions.append(int(rng.integers(source + 1, n_valid + 1)))  # after its original
            counts[reason] += from_previous + same_day
            continue
        pool = needs.get(reason, np.arange(len(templates)))
        # Without a suitable template (tiny worlds), the record becomes a missing_user_id one.
        actual = reason if len(pool) else "missing_user_id"
        pool = pool if len(pool) else np.arange(len(templates))
        new_ids = event_ids(count, rng)
        for k in range(count):
            template = templates[int(pool[rng.integers(0, len(pool))])]
            extra.append(_bad_record(actual, template, new_ids[k], rng))
            positions.append(int(rng.integers(0, n_valid + 1)))
            counts[actual] += 1
    return _interleave(valid, extra, np.array(positions, dtype=np.int64)), counts


def sample_duplicate_pool(valid: list[str], size: int, rng: np.random.Generator) -> list[str]:
    """Valid lines of today kept so tomorrow can re-send some of them as duplicates."""
    size = min(size, len(valid))
    return [valid[i] for i in np.sort(rng.choice(len(valid), size, replace=False)).tolist()] if size else []
