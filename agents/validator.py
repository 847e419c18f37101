"""The validator: compares legacy and new search results for a set of queries.

Issue 4 grows this into the full quality gate (MRR, nDCG, recall, latency); here it checks that the new column
answers searches and measures overlap with the legacy results on shards already done.
"""

from __future__ import annotations

from typing import Any

from swarm.config import Config
from swarm.log import configure, get_logger

log = get_logger()


class Validator:
    kind = "validator"

    def __init__(self, name: str, payload: dict[str, Any]) -> None:
        configure(json=True, actor=name)
        self.name = name
        self.cfg = Config.from_payload(payload)
        self.dsn: str = payload["dsn"]

    def ping(self) -> str:
        return self.name
