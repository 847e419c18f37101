"""``python -m bench [--quick] [--only a,b] [-c CONFIG]``: the performance figures (``make bench``)."""

from __future__ import annotations

import argparse
import sys

from bench.run import run
from swarm.core.config import load_config
from swarm.core.errors import SwarmError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("-c", "--config", help="TOML config (default: configs/demo.toml)")
    p.add_argument("--only", default=None, help="comma-separated figure names to run")
    p.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    args = p.parse_args(argv)
    try:
        return run(load_config(args.config), only=args.only.split(",") if args.only else None, quick=args.quick)
    except SwarmError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
