"""After completion the coordinator follows the table, like pgai's vectorizer worker: the sync trigger goes on
queueing the rows the application inserts or changes, and every ``swarm.follow_interval_s`` the migrators
embed them, until rollback, ``decommission --stop-following`` or ``shutdown``.

Each round checks that the table is still the one the migration was planned on (a table dropped and
recreated, a column or trigger gone): if not, the migration is recorded ``failed`` with the reason, which
``status`` shows, and following stops. Other errors (a restarting server, migrators coming back) are retried
with a backoff and shown as the lag's ``last_error``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from swarm import migration as mig
from swarm.core.log import get_logger

log = get_logger()

# ``coord`` below is the agents.coordinator.Coordinator that follows (not imported: it imports this module).

#: One round drains for at most this long before it checks the migration's state again.
ROUND_SECONDS = 10.0


async def follow(coord: Any, m: mig.Migration) -> None:
    interval = coord.cfg.swarm.follow_interval_s
    failures = 0
    log.info("migration.following", migration=m.id, interval_s=interval)
    while True:
        await asyncio.sleep(interval if not failures else min(60.0, interval * 2**failures))
        try:
            current = await coord._db(lambda c: mig.load(c, m.id), "follow")
            if current.state != "completed":
                log.info("migration.unfollowed", migration=m.id, state=current.state)
                return
            why = await coord._db(lambda c, cm=current: mig.verify_resumable(c, cm), "follow_verify")
            if why:
                await coord._retire(current, f"the table changed under the swarm while it followed: {why}")
                return
            await _drain_while_queued(coord, current)
            failures = 0
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the loop outlives a restarting server or worker
            failures += 1
            error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            log.warning("migration.follow_error", migration=m.id, error=error)
            try:
                await coord._db(lambda c, e=error: mig.record_lag(c, m.id, {"last_error": e}), "follow_error")
            except Exception:
                pass


async def _drain_while_queued(coord: Any, m: mig.Migration) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        done: Any = await coord.drain_round(m)
        lag = await coord.measure_lag(m, done or 0)
        if not done or lag.queued == 0 or loop.time() - started > ROUND_SECONDS:
            return
