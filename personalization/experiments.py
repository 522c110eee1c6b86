"""A/B experiments on precomputed recommendations: assignment and statistics.

Assignment is a deterministic hash of (experiment salt, user id): the same user
gets the same variant every night (sticky), and two experiments with different
salts split users independently. Nothing is stored per user.

Statistics are plain functions over per-user outcome arrays:
- :func:`compare_means` gives the absolute and relative lift of a variant over
  control with a Welch t-test p-value and a delta-method confidence interval for
  the relative lift;
- :func:`sample_ratio_mismatch` is a chi-square test of observed counts against
  the configured allocation;
- :func:`minimum_detectable_effect` / :func:`required_sample_size` give the
  sample-size note of a report.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

HOLDOUT = "holdout"
#: Joins the tags of a user's experiments in the ``variant`` column: ``"exp_a:x;exp_b:y"``.
TAG_SEPARATOR = ";"
#: What a variant's ``spec`` may say (see :mod:`models.variants`).
SPEC_KEYS = ("model_alias", "model_version", "model", "scoring", "personalized")


@dataclass(frozen=True)
class Variant:
    """One arm: a name, its share of traffic in percent, and what it serves.

    ``spec`` says how the arm's lists are produced, e.g. ``{"model_alias": "champion"}``,
    ``{"model": "popularity"}`` or ``{"scoring": {"diversity": "none"}}``.
    """

    name: str
    allocation_pct: float
    spec: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.spec) - set(SPEC_KEYS))
        models = [key for key in ("model_alias", "model_version", "model") if key in self.spec]
        if unknown or len(models) > 1:
            raise ValueError(f"variant {self.name!r}: spec keys must be among {SPEC_KEYS} with at most one "
                             f"model key, got {sorted(self.spec)}")
        if ":" in self.name or TAG_SEPARATOR in self.name:
            raise ValueError(f"variant name {self.name!r} may not contain ':' or {TAG_SEPARATOR!r}")


@dataclass(frozen=True)
class Experiment:
    """An experiment: variants whose allocations (plus the holdout) sum to 100."""

    name: str
    salt: str
    variants: tuple[Variant, ...]
    #: Percent of users who get non-personalised lists and are excluded from the variants.
    holdout_pct: float = 0.0

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError(f"experiment {self.name!r} has no variants")
        names = [variant.name for variant in self.variants]
        if len(set(names)) != len(names) or HOLDOUT in names:
            raise ValueError(f"experiment {self.name!r}: variant names must be unique and not {HOLDOUT!r}")
        total = sum(variant.allocation_pct for variant in self.variants) + self.holdout_pct
        if abs(total - 100.0) > 1e-9 or any(v.allocation_pct < 0 for v in self.variants) or self.holdout_pct < 0:
            raise ValueError(f"experiment {self.name!r}: allocations plus holdout must sum to 100, got {total}")

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> "Experiment":
        variants = tuple(
            Variant(str(v["name"]), float(v["allocation_pct"]), dict(v.get("spec", {})))  # type: ignore[arg-type]
            for v in data["variants"]  # type: ignore[union-attr]
        )
        return cls(str(data["name"]), str(data.get("salt", data["name"])), variants,
                   float(data.get("holdout_pct", 0.0)))  # type: ignore[arg-type]

    def expected_shares(self) -> dict[str, float]:
        """Expected fraction of users per arm (holdout included when non-zero)."""
        shares = {variant.name: variant.allocation_pct / 100.0 for variant in self.variants}
        if self.holdout_pct:
            shares[HOLDOUT] = self.holdout_pct / 100.0
        return shares


def tag(experiment: str, arm: str) -> str:
    """The ``variant`` column's tag of one experiment's arm: ``"<experiment>:<arm>"``."""
    return f"{experiment}:{arm}"


def load_experiments(path: str) -> list[Experiment]:
    """Experiments from a JSON or YAML file holding a list of ``{"name", "salt", "variants", "holdout_pct"}``."""
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text) or []
    else:
        data = json.loads(text)
    experiments = [Experiment.from_dict(item) for item in data]
    names = [experiment.name for experiment in experiments]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: experiment names must be unique, got {names}")
    return experiments


def bucket(user_id: str, salt: str) -> float:
    """A uniform number in [0, 1) from the user id and salt (SHA-256, stable across runs and machines)."""
    digest = hashlib.sha256(f"{salt}\x00{user_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign(user_ids: Iterable[str], experiment: Experiment) -> list[str]:
    """The arm of each user: the holdout first (lowest buckets), then variants in order."""
    edges: list[tuple[float, str]] = []
    upper = 0.0
    if experiment.holdout_pct:
        upper += experiment.holdout_pct / 100.0
        edges.append((upper, HOLDOUT))
    for variant in experiment.variants:
        upper += variant.allocation_pct / 100.0
        edges.append((upper, variant.name))
    arms = []
    for user_id in user_ids:
        point = bucket(user_id, experiment.salt)
        arms.append(next((name for edge, name in edges if point < edge), edges[-1][1]))
    return arms


# ------------------------------------------------------------------ statistics
@dataclass(frozen=True)
class Comparison:
    """Treatment versus control for one metric."""

    metric: str
    control_mean: float
    treatment_mean: float
    absolute_lift: float
    absolute_ci: tuple[float, float]
    relative_lift: float
    relative_ci: tuple[float, float]
    p_value: float
    n_control: int
    n_treatment: int

    @property
    def significant(self) -> bool:
        return self.absolute_ci[0] > 0 or self.absolute_ci[1] < 0


def compare_means(metric: str, control: Sequence[float], treatment: Sequence[float], alpha: float = 0.05) -> Comparison:
    """Per-user means compared with Welch's t-test; CIs at level ``1 - alpha``.

    The relative lift's interval uses the delta method for the ratio of two
    independent means: Var(T/C) ~ (varT/nT)/C^2 + T^2 (varC/nC)/C^4.
    """
    from scipy import stats

    c = np.asarray(control, dtype=float)
    t = np.asarray(treatment, dtype=float)
    if len(c) < 2 or len(t) < 2:
        raise ValueError(f"{metric}: need at least two users per arm, got {len(c)} and {len(t)}")
    mean_c, mean_t = float(c.mean()), float(t.mean())
    var_c, var_t = float(c.var(ddof=1)), float(t.var(ddof=1))
    se_diff = float(np.sqrt(var_c / len(c) + var_t / len(t)))
    z = float(stats.norm.ppf(1 - alpha / 2))
    diff = mean_t - mean_c
    if se_diff == 0:
        p_value = 1.0 if diff == 0 else 0.0
    else:
        p_value = float(stats.ttest_ind(t, c, equal_var=False).pvalue)
    if mean_c != 0:
        relative = diff / mean_c
        se_ratio = float(np.sqrt(var_t / len(t) / mean_c**2 + mean_t**2 * var_c / len(c) / mean_c**4))
        relative_ci = (relative - z * se_ratio, relative + z * se_ratio)
    else:
        relative, relative_ci = float("nan"), (float("nan"), float("nan"))
    return Comparison(metric, mean_c, mean_t, diff, (diff - z * se_diff, diff + z * se_diff), relative,
                      relative_ci, p_value, len(c), len(t))


def sample_ratio_mismatch(observed: Mapping[str, int], expected_shares: Mapping[str, float],
                          threshold: float = 0.001) -> dict[str, object]:
    """Chi-square test of arm sizes against the allocation; ``ok`` is False when p < threshold."""
    from scipy import stats

    arms = sorted(expected_shares)
    counts = np.array([observed.get(arm, 0) for arm in arms], dtype=float)
    total = counts.sum()
    if total == 0:
        raise ValueError("no users observed in any arm")
    expected = np.array([expected_shares[arm] for arm in arms]) * total
    statistic, p_value = stats.chisquare(counts, expected)
    return {"arms": arms, "observed": counts.astype(int).tolist(), "expected": expected.round(2).tolist(),
            "chi2": float(statistic), "p_value": float(p_value), "ok": bool(p_value >= threshold)}


def minimum_detectable_effect(std: float, n_per_arm: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest absolute difference in means detectable with two equal arms of ``n_per_arm`` users."""
    from scipy import stats

    if n_per_arm <= 0:
        raise ValueError("n_per_arm must be positive")
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return float(z * std * np.sqrt(2.0 / n_per_arm))


def required_sample_size(std: float, effect: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Users per arm needed to detect an absolute ``effect`` in means."""
    from scipy import stats

    if effect <= 0:
        raise ValueError("effect must be positive")
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return int(np.ceil(2.0 * (z * std / effect) ** 2))
