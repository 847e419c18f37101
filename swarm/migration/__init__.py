"""A migration's life in the database, one module per step: ``record`` (the migration and its state), ``plan``
(expand), ``shards``, ``backfill`` (a batch's write and the drain of queued changes), ``index``, ``status`` and
``rollback`` (contract). The names below are what the agents and the commands use."""

from swarm.migration.backfill import apply_batch, drain_changes, enqueue_missing
from swarm.migration.index import build_index, index_progress, index_settings, ivfflat_lists, search_rerank
from swarm.migration.plan import (
    REHEARSAL_COLUMN,
    TableInfo,
    inspect_table,
    legacy_checksum,
    plan,
    run_ddl,
    table_sizes,
    target_for,
    verify_resumable,
)
from swarm.migration.record import PAUSED, TERMINAL, Migration, event, latest, load, set_state
from swarm.migration.rollback import drop_sync, fence, retire, rollback, verify_legacy
from swarm.migration.shards import claim_shard, make_shards, release_shard, reopen, requeue_running, stop_shards
from swarm.migration.status import (
    check_connection,
    dead_letters,
    finish_counts,
    legacy_summary,
    queue_lag,
    record_lag,
    status,
)

__all__ = [
    "PAUSED",
    "REHEARSAL_COLUMN",
    "TERMINAL",
    "Migration",
    "TableInfo",
    "apply_batch",
    "build_index",
    "check_connection",
    "claim_shard",
    "dead_letters",
    "drain_changes",
    "drop_sync",
    "enqueue_missing",
    "event",
    "fence",
    "finish_counts",
    "index_progress",
    "index_settings",
    "inspect_table",
    "ivfflat_lists",
    "latest",
    "legacy_checksum",
    "load",
    "make_shards",
    "plan",
    "queue_lag",
    "record_lag",
    "release_shard",
    "reopen",
    "requeue_running",
    "retire",
    "rollback",
    "search_rerank",
    "run_ddl",
    "set_state",
    "status",
    "legacy_summary",
    "stop_shards",
    "table_sizes",
    "target_for",
    "verify_legacy",
    "verify_resumable",
]
