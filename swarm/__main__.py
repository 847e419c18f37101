from __future__ import annotations

import sys

from swarm.cli import main

sys.exit(main())
