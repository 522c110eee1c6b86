"""``python -m personalization.generator [--scale S] [--seed N] [--config FILE]``: (re)generate the world."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from personalization.config import load_config
from personalization.generator.generate import generate_world


def main(argv: list[str] | None = None) -> int:
    """Generate the world of the configuration (optionally overriding scale/seed); prints the summary."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=None, help="YAML configuration file (else $PE_CONFIG / defaults)")
    parser.add_argument("--scale", default=None, help="tiny | small | medium | large")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    generator = {
        key: value for key, value in (("scale", args.scale), ("seed", args.seed)) if value is not None
    }
    config = load_config(args.config, overrides={"generator": generator} if generator else None)
    summary = generate_world(config, progress=True)
    print(json.dumps(asdict(summary), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
