"""The application: inserts, content updates and deletes at a steady rate, on a thread or in a process of its own.

    python -m tests.support.writer --dsn DSN --table T --ids 1-400 --rate 5 --until terminal --out changes.json

It stops when ``stop`` is set (on a thread), or when the table's newest migration reaches the point ``until``
names (checked before every operation, so none starts past it): ``backfill`` (the migration left its backfill),
``index`` (it drained the backfill's changes and moved on to its index), ``terminal`` (completed, rolled back or
failed), ``never``; or after ``seconds`` in any case. What it did comes back as :class:`Writes`: the final
content of every row it touched (``None``: deleted) and its operation counts. A scenario compares that with
the table.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, field

import psycopg
from psycopg import sql

from tests.support.texts import code_text

TERMINAL = ("completed", "rolled_back", "failed")
UNTIL = {
    "backfill": lambda state, phase: phase not in (None, "plan", "backfill"),
    "index": lambda state, phase: phase in ("index", "validate", "rollout", "done") or state in TERMINAL,
    "terminal": lambda state, phase: state in TERMINAL,
    "never": lambda state, phase: False,
}


@dataclass
class Writes:
    changes: dict[str, str | None] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: {"insert": 0, "update": 0, "delete": 0})
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class AppWriter:
    dsn: str
    table: str
    ids: tuple[int, int]  # the existing keys, first..last
    rate: float = 5.0  # operations per second
    until: str = "terminal"
    seconds: float = 600.0
    seed: int = 0
    next_id: int = 100_000  # first key for inserts
    linger: float = 0.0  # go on writing this long after ``stop`` is set (the application outlives the migration)
    writes: Writes = field(default_factory=Writes)

    def run(self, stop: threading.Event | None = None) -> Writes:
        rng = random.Random(self.seed)
        live = list(range(self.ids[0], self.ids[1] + 1))
        done = UNTIL[self.until]
        t = sql.Identifier(*self.table.split(".", 1))
        next_id, n, started = self.next_id, 0, time.monotonic()
        stopped_at: float | None = None

        def stopping() -> bool:
            nonlocal stopped_at
            if stop is None or not stop.is_set():
                return False
            stopped_at = stopped_at or time.monotonic()
            return time.monotonic() - stopped_at >= self.linger

        with psycopg.connect(self.dsn, autocommit=True, application_name="app-writer") as c:
            while time.monotonic() - started < self.seconds and not stopping():
                if c.execute("SELECT to_regclass('swarm.migrations')").fetchone()[0]:
                    r = c.execute(
                        "SELECT state, phase FROM swarm.migrations WHERE table_name = %s ORDER BY id DESC LIMIT 1",
                        [self.table],
                    ).fetchone()
                    if r and done(r[0], r[1]):
                        break
                n += 1
                op = rng.choices(["insert", "update", "delete"], weights=[3, 5, 2])[0]
                text = code_text(rng, f"app{n}")
                if op == "insert" or not live:
                    c.execute(sql.SQL("INSERT INTO {} (id, content) VALUES (%s, %s)").format(t), [next_id, text])
                    self.writes.changes[str(next_id)] = text
                    live.append(next_id)
                    next_id, op = next_id + 1, "insert"
                elif op == "update":
                    k = rng.choice(live)
                    c.execute(sql.SQL("UPDATE {} SET content = %s WHERE id = %s").format(t), [text, k])
                    self.writes.changes[str(k)] = text
                else:
                    k = live.pop(rng.randrange(len(live)))
                    c.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(t), [k])
                    self.writes.changes[str(k)] = None
                self.writes.counts[op] += 1
                # Steady rate: the n-th operation is due at n / rate seconds.
                while (ahead := n / self.rate - (time.monotonic() - started)) > 0 and not stopping():
                    time.sleep(min(ahead, 0.2))
        self.writes.seconds = time.monotonic() - started
        return self.writes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--dsn", required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--ids", required=True, help="existing keys, FIRST-LAST")
    p.add_argument("--next-id", type=int, default=100_000)
    p.add_argument("--rate", type=float, default=5.0)
    p.add_argument("--until", choices=sorted(UNTIL), default="terminal")
    p.add_argument("--seconds", type=float, default=600.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    first, last = (int(x) for x in a.ids.split("-"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # a test ends the application: it says what it did
    w = AppWriter(a.dsn, a.table, (first, last), a.rate, a.until, a.seconds, a.seed, a.next_id).run(stop)
    with open(a.out, "w") as f:
        json.dump(asdict(w), f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
