"""The application, in a process of its own: inserts, content updates and deletes at a steady rate.

    python -m tests.faults.app_writer --dsn DSN --table T --ids 1-400 --rate 5 --until terminal --out changes.json

It stops when the table's newest migration reaches a terminal state (``--until terminal``), when it has drained
the changes made during the backfill and moved on to its index (``--until index``), or after ``--seconds``; then
it writes what it did: the final content of every row it touched (``null``: deleted) and its
operation counts. The scenario compares that with the table.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import psycopg

WORDS = "parse json file return list of lines wrap text width copy tree directory path socket read write".split()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--dsn", required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--ids", required=True, help="existing keys, FIRST-LAST")
    p.add_argument("--next-id", type=int, default=100_000, help="first key for inserts")
    p.add_argument("--rate", type=float, default=5.0, help="operations per second")
    p.add_argument("--until", choices=["terminal", "index", "seconds"], default="terminal")
    p.add_argument("--seconds", type=float, default=600.0, help="stop after this long in any case")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    rng = random.Random(a.seed)
    first, last = (int(x) for x in a.ids.split("-"))
    live = list(range(first, last + 1))
    changes: dict[str, str | None] = {}
    counts = {"insert": 0, "update": 0, "delete": 0}
    next_id = a.next_id
    started = time.monotonic()
    terminal = ("completed", "rolled_back", "failed")
    stop_at = {"terminal": terminal, "index": ("index", "validate", "rollout", "done", *terminal), "seconds": ()}[
        a.until
    ]
    n = 0
    with psycopg.connect(a.dsn, autocommit=True, application_name="app-writer") as c:
        while time.monotonic() - started < a.seconds:
            if stop_at and c.execute("SELECT to_regclass('swarm.migrations')").fetchone()[0]:
                # Checked before every operation: none starts once the migration is past that point.
                r = c.execute(
                    "SELECT state, phase FROM swarm.migrations WHERE table_name = %s ORDER BY id DESC LIMIT 1",
                    [a.table],
                ).fetchone()
                if r and (r[0] in stop_at or r[1] in stop_at):
                    break
            n += 1
            op = rng.choices(["insert", "update", "delete"], weights=[3, 5, 2])[0]
            text = f"def app{n}():  # " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10)))
            if op == "insert" or not live:
                c.execute(f"INSERT INTO {a.table} (id, content) VALUES (%s, %s)", [next_id, text])
                changes[str(next_id)] = text
                live.append(next_id)
                next_id += 1
                op = "insert"
            elif op == "update":
                k = rng.choice(live)
                c.execute(f"UPDATE {a.table} SET content = %s WHERE id = %s", [text, k])
                changes[str(k)] = text
            else:
                k = live.pop(rng.randrange(len(live)))
                c.execute(f"DELETE FROM {a.table} WHERE id = %s", [k])
                changes[str(k)] = None
            counts[op] += 1
            # Steady rate: the n-th operation is due at n / rate seconds.
            ahead = n / a.rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    with open(a.out, "w") as f:
        json.dump({"changes": changes, "counts": counts, "seconds": time.monotonic() - started}, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
