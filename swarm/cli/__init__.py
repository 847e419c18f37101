"""The command line: ``python -m swarm COMMAND``. Parses, dispatches to :mod:`swarm.commands`, prints.

A :class:`~swarm.core.errors.SwarmError` is printed on one line (``error: ...``) with its exit code; anything
else is a bug and shows its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from swarm.core.errors import SwarmError


def main(argv: Sequence[str] | None = None) -> int:
    from swarm.cli.parser import build_parser, run
    from swarm.core import log

    args = build_parser().parse_args(argv)
    log.configure("info" if args.verbose else os.environ.get("SWARM_LOG_LEVEL", "warning"))
    try:
        return run(args)
    except SwarmError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


__all__ = ["main"]
