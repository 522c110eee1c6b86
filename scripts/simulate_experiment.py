"""Simulate 7-day A/B experiments in the synthetic world and write their reports (HTML + JSON).

Usage::

    python scripts/simulate_experiment.py [OUT_DIR] [--users N] [--apps N] [--days 7] [--warmup-days 14]
        [--seed 42] [--scenario NAME ...] [--screenshot]

Scenarios (``personalization.experiment_simulation.SCENARIOS``): ``champion_vs_popularity``
(the champion's lift must show with a CI above zero), ``a_a`` (no significant difference, SRM
passes) and ``broken_allocation`` (A/A declared 50/50 but served 60/40: SRM must fail). Writes
``OUT_DIR/<scenario>/report.html``, ``report.json`` and ``OUT_DIR/summary.json`` (default OUT_DIR
``results/experiment_simulation``); ``--screenshot`` also renders each page with headless Chromium
(``scripts/screenshot_report.py``). Exit status 1 when a scenario did not come out as it must.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from personalization.config import load_config  # noqa: E402
from personalization.experiment_simulation import EXPERIMENT_PRESET, SCENARIOS, Simulation, run_scenarios  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", type=Path, default=Path("results/experiment_simulation"))
    parser.add_argument("--users", type=int, default=EXPERIMENT_PRESET.n_users, help="users before day one")
    parser.add_argument("--apps", type=int, default=EXPERIMENT_PRESET.n_apps, help="apps before day one")
    parser.add_argument("--days", type=int, default=7, help="experiment days")
    parser.add_argument("--warmup-days", type=int, default=14, help="days of history before the experiment")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), help="default: all")
    parser.add_argument("--screenshot", action="store_true", help="PNG of each report with headless Chromium")
    args = parser.parse_args(argv)
    settings = Simulation(preset=dataclasses.replace(EXPERIMENT_PRESET, n_users=args.users, n_apps=args.apps),
                          warmup_days=args.warmup_days, days=args.days, seed=args.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pe-simulation-") as scratch:
        # Nothing is written under the project's var/: the simulation needs no lake or MLflow store.
        config = load_config(overrides={"paths": {"root": scratch}})
        summary = run_scenarios(config, args.out_dir, settings, args.scenario or tuple(SCENARIOS))
    summary["seconds"] = round(time.perf_counter() - started, 1)
    (args.out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    status = 0
    for name, outcome in summary["scenarios"].items():
        print(f"{name}: {'PASS' if outcome['passed'] else 'FAIL'} ({outcome['expectation']}); "
              f"SRM p={outcome['srm_p_value']:.3g}; report {outcome['report']['html']}")
        for metric, lift in outcome["lifts"].items():
            low, high = lift["relative_ci"]
            print(f"    {metric:20s} relative lift CI [{100 * low:+.1f}%, {100 * high:+.1f}%] p={lift['p_value']:.3g}")
        status |= 0 if outcome["passed"] else 1
        if args.screenshot:
            from screenshot_report import main as screenshot

            status |= screenshot([outcome["report"]["html"]])
    print(f"summary: {args.out_dir / 'summary.json'} ({summary['seconds']} s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
