"""One plain function per command (Alembic's ``command.py``); the CLI only parses and dispatches.

Scripted migrations call these directly::

    from swarm import commands
    from swarm.core.config import load_config
    cfg = load_config("configs/demo.toml")
    commands.orchestrate(cfg, "Migrate embeddings to Nomic")

``ray`` and ``llama_cpp`` are imported inside the commands that need them, so ``--help`` and config errors are
instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from swarm import migration as mig
from swarm.core.config import Config
from swarm.core.errors import (
    EXIT_FAILED,
    EXIT_HELD,
    EXIT_OK,
    EXIT_PAUSED,
    EXIT_ROLLED_BACK,
    ConfigError,
    ModelError,
    SwarmError,
    UsageError,
)
from swarm.core.log import get_logger
from swarm.store.db import Database
from swarm.store.embedded import embedded_server, resolve_dsn, stop_embedded
from swarm.store.schema import init_schema

log = get_logger()


def _out(text: str = "") -> None:
    print(text, flush=True)


# --------------------------------------------------------------------------------------------------------------
# db
# --------------------------------------------------------------------------------------------------------------
def db_url(cfg: Config) -> str:
    """The connection URL of the configured database (the embedded one is started if needed), password masked."""
    from swarm.core.config import redact_dsn

    return redact_dsn(resolve_dsn(cfg))


def db_stop(cfg: Config) -> bool:
    return stop_embedded(cfg.state_dir)


def db_start(cfg: Config) -> str:
    return str(embedded_server(cfg.state_dir).get_uri())


# --------------------------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------------------------
def model_prepare(to: str = "model") -> list[tuple[Path, str]]:
    from model.provision import prepare

    return prepare(to)


def model_inspect(path: str) -> Any:
    from model.gguf_info import read_info

    return read_info(path)


def model_embed(
    model: str, texts: list[str], *, query: bool = False, prefix: str | None = None, cfg: Config | None = None
) -> Any:
    """Embed ``texts`` with the GGUF at ``model``; prefixes from the config when it names that model."""
    from model.embedder import LlamaEmbedder

    doc_prefix = query_prefix = ""
    if cfg is not None:
        for section in (cfg.embedding, cfg.legacy):
            if Path(cfg.path(section.model_path)).resolve() == Path(model).resolve():
                doc_prefix, query_prefix = section.document_prefix, section.query_prefix
    if prefix is not None:
        doc_prefix = query_prefix = prefix
    emb = LlamaEmbedder(model, document_prefix=doc_prefix, query_prefix=query_prefix, cache_size=0)
    return emb.embed(texts, query=query)


def model_pull(url: str, sha256: str, to: str = "model") -> Path:
    from model.provision import pull

    return pull(url, sha256, to)


# --------------------------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------------------------
def demo_seed(
    cfg: Config, *, limit: int | None = None, queries: int = 600, force: bool = False, progress: bool = True
) -> dict[str, Any]:
    from swarm.ops.demo import seed

    for p in (cfg.legacy.model_path,):
        if not cfg.path(p).exists():
            raise ModelError(str(cfg.path(p)), "no such file; run `python -m swarm model prepare` first")
    return seed(cfg, limit=limit, n_queries=queries, force=force, progress=progress)


# --------------------------------------------------------------------------------------------------------------
# preflight: everything that can be wrong is found before any change
# --------------------------------------------------------------------------------------------------------------
def preflight(cfg: Config, db: Database, *, rehearse: bool = False) -> tuple[Any, mig.TableInfo, Any]:
    """Check the model file, the table and the legacy column; nothing is written. Returns (model info, table,
    server)."""
    info = None
    if not rehearse:
        from model.gguf_info import check_dimension, read_info

        info = read_info(str(cfg.path(cfg.embedding.model_path)))
        check_dimension(info, cfg.embedding.dimension)
    table = db.run(lambda c: mig.inspect_table(c, cfg), what="inspect")
    if table.legacy_dim is None:
        raise ConfigError(
            "database.legacy_column",
            cfg.database.legacy_column,
            f"is {table.legacy_type}, not a vector column",
        )
    legacy_path = cfg.path(cfg.legacy.model_path)
    if legacy_path.exists():
        from model.gguf_info import read_info

        legacy = read_info(str(legacy_path))
        if legacy.n_embd != table.legacy_dim:
            raise ConfigError(
                "database.legacy_column",
                cfg.database.legacy_column,
                f"holds vector({table.legacy_dim}) but the legacy model {legacy_path.name} gives {legacy.n_embd} "
                "dims; point [legacy].model_path at the model that filled this column",
            )
    elif cfg.swarm.validators > 0 and not rehearse:
        raise ModelError(
            str(legacy_path),
            "no such file ([legacy].model_path, needed by validators); "
            "run `python -m swarm model prepare` or set swarm.validators = 0",
        )
    if cfg.swarm.validators > 0 and not rehearse and not cfg.validation.queries.startswith("table:"):
        from swarm.quality import load_queries

        load_queries(cfg.path(cfg.validation.queries))  # a missing or malformed query set fails now, not after
    server = init_schema(db)  # the first write, after every check passed
    return info, table, server


# --------------------------------------------------------------------------------------------------------------
# init / spawn / shutdown
# --------------------------------------------------------------------------------------------------------------
def _payload(cfg: Config, dsn: str) -> dict[str, Any]:
    return cfg.to_payload(dsn)


def init(cfg: Config, *, topology: str = "hierarchical", address: str | None = None) -> dict[str, Any]:
    """Connect to (or start) Ray, create the coordinator, create the bookkeeping tables. Idempotent."""
    from swarm.core.config import TOPOLOGIES

    if topology not in TOPOLOGIES:
        raise ConfigError("--topology", topology, f"unknown topology; supported: {', '.join(TOPOLOGIES)}")
    dsn = resolve_dsn(cfg)
    db = Database(dsn)
    server = init_schema(db)
    db.close()
    from agents import actors as agents_ray
    from agents import runtime

    record = runtime.connect(
        cfg.state_dir, address or cfg.swarm.ray_address or None, dashboard_host=cfg.swarm.dashboard_host
    )
    coord = agents_ray.coordinator(_payload(cfg, dsn))
    import ray

    ray.get(coord.ping.remote())
    return {
        "topology": topology,
        "ray_address": record["address"],
        "dashboard": record.get("dashboard"),
        "metrics_port": record.get("metrics_port"),
        "coordinator": "coordinator",
        "pgvector": server.pgvector_version,
    }


def spawn(cfg: Config, kind: str, count: int = 1, *, rehearse: bool = False) -> list[str]:
    """Add ``count`` named, detached agents of ``kind`` that register with the coordinator."""
    if count < 1:
        raise UsageError(f"--count {count}: must be >= 1")
    from agents import actors as agents_ray
    from agents import runtime

    runtime.connect(cfg.state_dir, cfg.swarm.ray_address or None, start=False)
    dsn = resolve_dsn(cfg)
    payload = _payload(cfg, dsn)
    if kind == "migration-coordinator":
        import ray

        ray.get(agents_ray.coordinator(payload).ping.remote())
        return ["coordinator"]
    if runtime.get_actor(runtime.COORDINATOR) is None:
        raise SwarmError("no coordinator; run `python -m swarm init` first")
    if kind == "data-migrator":
        if not rehearse:
            from model.gguf_info import check_dimension, read_info

            check_dimension(read_info(str(cfg.path(cfg.embedding.model_path))), cfg.embedding.dimension)
        total = len(runtime.list_agents("data-migrator-")) + count
        resources, threads = agents_ray.placement(cfg, total)
        agents_ray.check_capacity(cfg, resources, count)
        return agents_ray.spawn_migrators(payload, count, rehearse=rehearse, threads=threads, resources=resources)
    if kind == "validator":
        return agents_ray.spawn_validators(payload, count)
    raise UsageError(f"--type {kind}: use migration-coordinator, data-migrator or validator")


def shutdown(cfg: Config) -> dict[str, Any]:
    """Stop the swarm's actors, and the local Ray head if ``init`` started it."""
    from agents import actors as agents_ray
    from agents import runtime

    try:
        runtime.connect(cfg.state_dir, cfg.swarm.ray_address or None, start=False)
    except SwarmError:
        return {"killed": [], "head_stopped": False}
    killed = agents_ray.kill_all()
    import ray

    ray.shutdown()
    stopped = runtime.stop_head(cfg.state_dir)
    return {"killed": killed, "head_stopped": stopped}


def ensure_swarm(cfg: Config, dsn: str, *, rehearse: bool = False) -> Any:
    """The coordinator handle, after creating whatever part of the swarm is missing (config defaults)."""
    import ray

    from agents import actors as agents_ray
    from agents import runtime

    runtime.connect(cfg.state_dir, cfg.swarm.ray_address or None, dashboard_host=cfg.swarm.dashboard_host)
    payload = _payload(cfg, dsn)
    coord = agents_ray.coordinator(payload)
    ray.get(coord.ping.remote())
    agents_ray.reregister(coord)
    have = runtime.list_agents("data-migrator-")
    if len(have) < cfg.swarm.migrators:
        resources, threads = agents_ray.placement(cfg, cfg.swarm.migrators)
        count = cfg.swarm.migrators - len(have)
        agents_ray.check_capacity(cfg, resources, count)
        agents_ray.spawn_migrators(payload, count, rehearse=rehearse, threads=threads, resources=resources)
    if not rehearse and len(runtime.list_agents("validator-")) < cfg.swarm.validators:
        agents_ray.spawn_validators(payload, cfg.swarm.validators - len(runtime.list_agents("validator-")))
    return coord


# --------------------------------------------------------------------------------------------------------------
# orchestrate / status / rollback
# --------------------------------------------------------------------------------------------------------------
EXIT_BY_STATE = {"completed": EXIT_OK, "rolled_back": EXIT_ROLLED_BACK, "failed": EXIT_FAILED, "paused": EXIT_PAUSED}


def orchestrate(
    cfg: Config,
    name: str = "Migrate embeddings to Nomic",
    *,
    detach: bool = False,
    rehearse: bool = False,
    progress: bool = True,
    verbose: bool | None = None,
    poll: float = 0.5,
) -> int:
    """Run a migration to its end and return its exit code (0 completed, 3 rolled back, 1 failed, 4 paused).

    Everything that can be wrong with the config, the model or the table is found before any change. A
    migration of this table that did not finish is resumed, not planned again. ``progress`` shows the live view
    (periodic lines when not on a terminal); ``verbose`` (default: as ``progress``) prints what happens and
    the closing summary.
    """
    import ray

    verbose = progress if verbose is None else verbose
    dsn = resolve_dsn(cfg)
    db = Database(dsn, application_name="swarm:orchestrate")
    info, table, server = preflight(cfg, db, rehearse=rehearse)
    current = db.run(lambda c: mig.latest(c, cfg, rehearse=rehearse), what="latest")
    coord = ensure_swarm(cfg, dsn, rehearse=rehearse)
    resumable = current is not None and (current.state not in mig.TERMINAL or current.state == "completed")
    if current is not None and resumable and current.phase != "unfollowed":
        why = db.run(lambda c: mig.verify_resumable(c, current), what="verify")
        if why:
            # The table changed under the swarm (restored from a backup, column or trigger dropped by hand): the
            # old migration cannot go on. It is recorded failed with the reason; a new one is planned.
            _stop_coordinator(cfg)
            mig.retire(db, current, cfg, reason=f"cannot resume: {why}")
            _out(f"migration {current.id} cannot be resumed ({why}); recorded as failed, planning a new migration")
            resumable = False
    if current is not None and resumable and current.phase != "unfollowed":
        # Resume an unfinished migration; run a completed one again to catch up with the application's writes.
        m = current
        log.info("migration.resume", migration=m.id, state=m.state)
        if m.state == mig.PAUSED:

            def reopen(c: Any) -> None:
                with c.transaction():
                    mig.reopen(c, m.id)
                    mig.set_state(c, m.id, "running", clear_reason=True)

            db.run(reopen, what="reopen")
        if verbose:
            verb = "catching up" if m.state == "completed" else "resuming"
            _out(f"{verb}: migration {m.id} ({m.name!r}, {m.state})")
    else:
        dim = cfg.new_dimension if rehearse else (cfg.embedding.truncate_dim or info.n_embd)
        m = mig.plan(
            db,
            cfg,
            name=name,
            model_id="rehearsal-stand-in" if rehearse else cfg.embedding.model,
            model_sha256="rehearsal" if rehearse else info.sha256,
            dimension=dim,
            server=server,
            table=table,
            rehearse=rehearse,
        )
    ray.get(coord.start.remote(m.id))
    if detach:
        if verbose:
            _out(f"migration {m.id} started; follow it with `python -m swarm status --watch`")
        return EXIT_OK
    from swarm.ops.progress import watch

    try:
        final = watch(db, m, coord=coord, live=progress and sys.stdout.isatty(), quiet=not progress, poll=poll)
    except KeyboardInterrupt:
        ray.get(coord.stop.remote())
        _out(f"\nmigration {m.id} paused; run orchestrate again to resume it")
        raise
    paths = _write_report(cfg, db, m.id)
    from swarm.ops.progress import summary, validation_status

    final.update(db.run(lambda c: validation_status(c, m.id), what="validation"))
    if verbose:
        _out(summary(final))
        if paths:
            _out("report: " + ", ".join(str(p) for p in paths.values()))
    if final["state"] == "completed" and (final.get("validation") or {}).get("verdict") == "INCONCLUSIVE":
        return EXIT_HELD  # fail closed: migrated, but not validated; nothing serves from the new column
    return EXIT_BY_STATE.get(final["state"], EXIT_FAILED)


def _write_report(cfg: Config, db: Database, mid: int) -> dict[str, str]:
    """The migration's audit report under reports/; a failure here is logged, never fatal to the migration."""
    from swarm.ops import report as ops_report

    try:
        return ops_report.write(cfg, db, mid)
    except Exception:
        log.exception("report.failed", migration=mid)
        return {}


def status(cfg: Config) -> dict[str, Any]:
    """The current migration of the configured table, read from the database."""
    dsn = resolve_dsn(cfg)
    db = Database(dsn)
    m = db.run(lambda c: mig.latest(c, cfg), what="latest")
    if m is None:
        return {
            "migration": None,
            "state": "none",
            "rows_total": 0,
            "rows_done": 0,
            "rows_failed": 0,
            "shards": [],
            "rollout_percent": 0.0,
        }
    st = db.run(lambda c: mig.status(c, m), what="status")
    st["agents"] = db.run(
        lambda c: [
            dict(zip(("name", "kind", "node", "pid", "rss_mb", "model_mb", "state"), r, strict=True))
            for r in c.execute(
                "SELECT name, kind, node, pid, rss_mb, model_mb, state FROM swarm.agents ORDER BY name"
            ).fetchall()
        ],
        what="agents",
    )
    st["dead_letters"] = db.run(lambda c: mig.dead_letters(c, m.id, 20), what="dead_letters")
    from swarm.ops.progress import validation_status

    st.update(db.run(lambda c: validation_status(c, m.id), what="validation"))  # the last round and how many
    from swarm.serving import alerts

    st["alerts"] = db.run(lambda c: alerts.firing(c, m.id), what="alerts")
    db.close()
    return st


def rollback(cfg: Config, *, reason: str = "manual rollback", keep_data: bool = False) -> dict[str, Any]:
    """Share to 0%, stop the migrators, drop the new column and its index (unless ``keep_data``).

    The coordinator is stopped first when a swarm runs (its run and its following end), then
    :func:`swarm.migration.rollback` does the rest: the one rollback, whoever asks for it.
    """
    db = Database(resolve_dsn(cfg))
    try:
        m = current_migration(db, cfg, rehearse=None)
        if m.state == "rolled_back":
            raise UsageError(f"migration {m.id} is already rolled back ({m.reason})")
        if m.phase == "decommissioned":
            raise UsageError(
                f"migration {m.id} was decommissioned: the legacy column is gone and there is nothing to roll back "
                "to; restore it from the archive table if you must"
            )
        _stop_coordinator(cfg)
        return mig.rollback(db, m, cfg, reason=reason, keep_data=keep_data)
    finally:
        db.close()


def _stop_coordinator(cfg: Config) -> None:
    try:
        from agents import runtime

        runtime.connect(cfg.state_dir, cfg.swarm.ray_address or None, start=False)
        coord = runtime.get_actor(runtime.COORDINATOR)
        if coord is not None:
            import ray

            ray.get(coord.stop.remote(), timeout=30)
    except SwarmError:
        pass  # no swarm running: nothing to stop


def current_migration(db: Database, cfg: Config, *, rehearse: bool | None = False) -> mig.Migration:
    """The newest migration of the configured table; a clear error when there is none."""
    m = db.run(lambda c: mig.latest(c, cfg, rehearse=rehearse), what="latest")
    if m is None:
        raise UsageError(f"no migration of {cfg.database.table}; run `python -m swarm orchestrate` first")
    return m


# --------------------------------------------------------------------------------------------------------------
# assess / validate / rollout / search / serve / decommission / report
# --------------------------------------------------------------------------------------------------------------
def assess(cfg: Config, *, sample_rows: int = 256, progress: Any = None) -> dict[str, Any]:
    """Phase 1: sizes, token lengths, throughput, legacy search quality; changes nothing."""
    from swarm.ops import assess as ops_assess

    return ops_assess.assess(cfg, sample_rows=sample_rows, progress=progress)


def validate(cfg: Config) -> dict[str, Any]:
    """Legacy vs new search on the query set, with the gates (a validator in this process)."""
    from agents.validator import Validator

    dsn = resolve_dsn(cfg)
    db = Database(dsn)
    try:
        m = current_migration(db, cfg)
    finally:
        db.close()
    validator = Validator("validator-cli", cfg.to_payload(dsn))
    try:
        return validator.validate(m.id)
    finally:
        validator.close()


def rollout(
    cfg: Config,
    *,
    percent: float | None = None,
    auto: bool = False,
    use_new: bool | None = None,
    out: Any = None,
) -> tuple[int, dict[str, Any]]:
    """Set the share of queries on the new column, or step through ``[rollout].steps`` (``auto``): a failed
    step rolls back (exit code 3); or (``use_new``) turn the database's kill switch off or on: every router and
    ``swarm.arm`` then send every query to legacy. Returns (exit code, what happened)."""
    from swarm.serving import rollout as serving_rollout

    dsn = resolve_dsn(cfg)
    db = Database(dsn, application_name="swarm:rollout")
    try:
        if use_new is not None:
            from swarm.store import routing
            from swarm.store.schema import ensure_serving

            db.run(ensure_serving, what="serving_schema")
            prev = db.run(lambda c: routing.set_use_new(c, use_new, reason="rollout --use-new"), what="use_new")
            latest = db.run(lambda c: mig.latest(c, cfg, rehearse=False), what="latest")
            if latest is not None:
                db.run(lambda c: mig.event(c, latest.id, "use_new", use_new=use_new, previous=prev), what="event")
            return EXIT_OK, {"use_new": use_new, "previous": prev, "failures": []}
        m = current_migration(db, cfg)
        if not auto:
            if percent is None:
                raise UsageError("rollout: give --percent N or --auto")
            previous = serving_rollout.set_percent(db, m, percent, reason="manual")
            return EXIT_OK, {"migration": m.id, "previous": previous, "percent": percent, "failures": []}
        result = serving_rollout.run_auto(cfg, db, m, dsn, out=out)
    finally:
        db.close()
    if result["failures"]:
        result["rollback"] = rollback(cfg, reason="rollout failed: " + "; ".join(result["failures"]))
        return EXIT_ROLLED_BACK, result
    return EXIT_OK, result


def search(
    cfg: Config,
    query: str,
    *,
    k: int = 10,
    caller: str | None = None,
    where: dict[str, Any] | None = None,
    columns: tuple[str, ...] = (),
) -> Any:
    """One query through the router (legacy or new column by the rollout share)."""
    from swarm.serving.router import Router

    router = Router(cfg, resolve_dsn(cfg), source="search")
    try:
        return router.search(query, k=k, caller=caller, where=where, columns=columns)
    finally:
        router.close()


def serve(
    cfg: Config, *, host: str = "127.0.0.1", port: int = 8765, token: str | None = None, out: Any = print
) -> None:
    """HTTP search endpoint until interrupted; ``token`` (else ``SWARM_SERVE_TOKEN``) is required on every request
    and must be set to listen on anything but loopback."""
    import os

    from swarm.serving import http

    if port < 0 or port > 65535:
        raise UsageError(f"--port {port}: must be 0..65535")
    token = token or os.environ.get(http.TOKEN_ENV) or None
    http.serve(cfg, resolve_dsn(cfg), host=host, port=port, token=token, out=out)


def decommission(
    cfg: Config, *, archive: str | None = None, rename: bool = False, stop_following: bool = False
) -> dict[str, Any]:
    """After 100% with passing gates: archive the legacy embeddings and drop the legacy column (``rename``: the
    new column takes its name; ``stop_following``: the sync trigger goes too)."""
    from swarm.ops import decommission as ops_decommission

    return ops_decommission.decommission(
        cfg, resolve_dsn(cfg), archive=archive, rename=rename, stop_following=stop_following
    )


def report(cfg: Config) -> dict[str, str]:
    """The latest migration's report under reports/ (Markdown, JSON, PNG charts)."""
    from swarm.ops import report as ops_report

    db = Database(resolve_dsn(cfg))
    try:
        return ops_report.write(cfg, db, current_migration(db, cfg).id)
    finally:
        db.close()
