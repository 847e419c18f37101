"""Validation on a corpus the project has never seen, checked against an independent exact search.

The table is built here from a seeded vocabulary, the way a user's table looks to swarm: schema-qualified and
mixed-case (``"Acme"."CodeDocs"``, columns ``"DocId"`` uuid, ``"Body"``, ``"LegacyVec"``), the query set in a
table of its own (``"Acme"."EvalQueries"``, uuid[] answers, a ``slice`` per team). The real swarm (in-process
coordinator, migrator and two validators) migrates it; the figures of its final validation round must equal,
within 0.01, MRR@10 and recall@10 computed here with numpy over every row: the test's own ranking and
metrics, sharing nothing with swarm but the two query embeddings.
"""

from __future__ import annotations

import itertools
import random
import uuid
from pathlib import Path

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

from tests.support.runner import run_in_process
from tests.test_router import write_config

VERBS = "parse merge split encode compress validate render index sort fetch".split()
NOUNS = "invoice ledger token schema thumbnail playlist sensor voucher manifest glossary".split()
ADJS = "stale nested".split()
#: How a user asks for each verb: never the word in the code.
ASKED = dict(
    zip(VERBS, "read combine divide serialize shrink check draw catalogue order download".split(), strict=True)
)


def _corpus(rng: random.Random) -> tuple[list[tuple[str, str]], list[tuple[str, list[str], str]]]:
    """200 functions (verb x noun x adjective) with uuid keys and a comment naming other things; 70 queries in
    the user's words: 50 with one answer (verb, noun, adjective), 20 with two (verb and noun)."""
    docs: list[tuple[str, str]] = []
    by_combo: dict[tuple[str, str, str], str] = {}
    for verb, noun, adj in itertools.product(VERBS, NOUNS, ADJS):
        key = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        noise = " ".join(rng.choice(VERBS + NOUNS) for _ in range(6))
        body = (
            f"def {verb}_{adj}_{noun}s(items):\n"
            f"    # see also: {noise}\n"
            f"    return [{verb}(x) for x in items if x.kind == '{noun}' and x.{adj}]"
        )
        docs.append((key, body))
        by_combo[(verb, noun, adj)] = key
    rng.shuffle(docs)
    queries: list[tuple[str, list[str], str]] = []
    for verb, noun, adj in rng.sample(sorted(by_combo), 50):
        queries.append((f"{ASKED[verb]} the {adj} {noun} records", [by_combo[(verb, noun, adj)]], "team-a"))
    for verb, noun in rng.sample(sorted(itertools.product(VERBS, NOUNS)), 20):
        queries.append((f"how do I {ASKED[verb]} a {noun}", [by_combo[(verb, noun, a)] for a in ADJS], "team-b"))
    return docs, queries


def _exact(qv: np.ndarray, keys: list[str], mat: np.ndarray, k: int = 10) -> list[str]:
    sims = mat @ (qv / np.linalg.norm(qv))
    return [keys[i] for i in np.argsort(-sims, kind="stable")[:k]]


def _mrr(ranked: list[str], rel: list[str]) -> float:
    return next((1.0 / r for r, key in enumerate(ranked, 1) if key in rel), 0.0)


def _recall(ranked: list[str], rel: list[str]) -> float:
    return len(set(ranked) & set(rel)) / min(len(rel), len(ranked))


def test_validation_figures_match_an_independent_exact_search(dsn: str, tmp_path: Path, minilm_f16: Path) -> None:
    from model.factory import embedder_for

    rng = random.Random(20261201)
    docs, queries = _corpus(rng)
    cfg = write_config(
        tmp_path,
        dsn,
        database={
            "table": "Acme.CodeDocs",
            "id_column": "DocId",
            "content_column": "Body",
            "legacy_column": "LegacyVec",
            "new_column": "NewVec",
        },
        swarm={"migrators": 1, "validators": 2, "shard_rows": 60},
        validation={"queries": "table:Acme.EvalQueries", "min_queries": 20, "max_p95_latency_ms": 60_000},
    )
    legacy = embedder_for(cfg, "legacy", cache_size=0)
    with psycopg.connect(dsn, autocommit=True) as c:
        register_vector(c)
        c.execute('CREATE SCHEMA "Acme"')
        c.execute(
            'CREATE TABLE "Acme"."CodeDocs" ("DocId" uuid PRIMARY KEY, "Body" text NOT NULL, "LegacyVec" vector(384))'
        )
        vecs = legacy.embed([b for _, b in docs])
        copy = 'COPY "Acme"."CodeDocs" ("DocId", "Body", "LegacyVec") FROM STDIN WITH (FORMAT BINARY)'
        with c.cursor() as cur, cur.copy(copy) as cp:
            cp.set_types(["uuid", "text", "vector"])
            for (key, body), v in zip(docs, vecs, strict=True):
                cp.write_row((uuid.UUID(key), body, v))
        c.execute(
            'CREATE INDEX "CodeDocs_LegacyVec_idx" ON "Acme"."CodeDocs" USING hnsw ("LegacyVec" vector_cosine_ops)'
        )
        c.execute('CREATE TABLE "Acme"."EvalQueries" (query text PRIMARY KEY, relevant_ids uuid[], slice text)')
        for q in queries:
            c.execute('INSERT INTO "Acme"."EvalQueries" VALUES (%s, %s::uuid[], %s)', list(q))
    legacy.close()

    run = run_in_process(cfg, dsn, migrators=1, validators=2, close=True)
    assert run.result["state"] == "completed", run.result

    with psycopg.connect(dsn, autocommit=True) as c:
        register_vector(c)
        final = c.execute(
            "SELECT detail FROM swarm.events WHERE kind = 'validation' AND migration_id = %s ORDER BY id DESC LIMIT 1",
            [run.migration.id],
        ).fetchone()[0]
        rows = c.execute('SELECT "DocId"::text, "LegacyVec", "NewVec" FROM "Acme"."CodeDocs"').fetchall()
    assert final["stage"] == "final" and final["judged"] == final["queries"] == 70
    assert final["validators"] == ["validator-0", "validator-1"]
    keys = [r[0] for r in rows]
    texts = [q for q, _, _ in queries]
    figures = {}
    for arm, col in (("legacy", 1), ("new", 2)):
        mat = np.stack([np.asarray(r[col].to_numpy(), dtype=np.float64) for r in rows])
        mat /= np.linalg.norm(mat, axis=1, keepdims=True)
        with embedder_for(cfg, arm, cache_size=0) as e:
            qvs = e.embed(texts, query=True).astype(np.float64)
        ranked = [_exact(qv, keys, mat) for qv in qvs]
        figures[arm] = {
            "mrr_at_10": float(np.mean([_mrr(r, rel) for r, (_, rel, _) in zip(ranked, queries, strict=True)])),
            "recall_at_k": float(np.mean([_recall(r, rel) for r, (_, rel, _) in zip(ranked, queries, strict=True)])),
        }
    for arm in ("legacy", "new"):
        for metric in ("mrr_at_10", "recall_at_k"):
            assert abs(final[arm][metric] - figures[arm][metric]) <= 0.01, (arm, metric, final[arm], figures[arm])
    # The set is not trivial for the model, and the slices were read from the table.
    assert 0.2 < figures["legacy"]["mrr_at_10"] < 0.95 and figures["legacy"]["recall_at_k"] < 0.99
    assert {name: s["queries"] for name, s in final["slices"].items()} == {"team-a": 50, "team-b": 20}
    assert final["verdict"] == "PASS"
