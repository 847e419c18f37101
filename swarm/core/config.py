"""Configuration: TOML files under ``configs/`` loaded into pydantic models.

Unknown keys are errors (``extra="forbid"``): a typo must not silently become a default. Environment variables
override the file: ``SWARM_<TABLE>__<KEY>`` (``SWARM_EMBEDDING__BATCH_SIZE=64``), and the seed's feature flag
``USE_NOMIC_EMBEDDINGS=false`` sends every query to the legacy column. A bad value raises
:class:`~swarm.errors.ConfigError` naming the key, the value and the fix, before anything is written anywhere.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from swarm.core.errors import ConfigError

CONFIG_VERSION = 1
DEFAULT_CONFIG = "configs/demo.toml"
TOPOLOGIES = ("hierarchical",)

# A plain SQL identifier part as written in config; quoting happens in swarm.sql via psycopg.sql.Identifier.
# We accept any printable name without quotes, semicolons or whitespace so that "documents; DROP TABLE x"
# is refused here with a clear message, and mixed-case or schema-qualified names pass.
# "$" is legal in PostgreSQL names and allowed (the sync trigger's body is a quoted literal, not dollar-quoted).
_IDENT = re.compile(r'^[^\s;"\'\\\x00]{1,63}$')


def _check_ident(value: str, key: str, qualified: bool = False) -> str:
    parts = value.split(".") if qualified else [value]
    if len(parts) > 2 or not all(_IDENT.match(p) for p in parts):
        raise ValueError(
            f"not a valid {'[schema.]table' if qualified else 'column'} name; use letters, digits and _ "
            "(no spaces, quotes or ';'), at most 63 characters per part"
        )
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatabaseConfig(_Section):
    dsn: SecretStr = Field(default=SecretStr(""), description="empty: the embedded server in .swarm/pgdata")
    table: str = "documents"
    id_column: str = "id"
    content_column: str = "content"
    legacy_column: str = "embedding"
    new_column: str = "nomic_embedding"
    connect_timeout: int = Field(default=10, gt=0)

    @field_validator("table")
    @classmethod
    def _table(cls, v: str) -> str:
        return _check_ident(v, "table", qualified=True)

    @field_validator("id_column", "content_column", "legacy_column", "new_column")
    @classmethod
    def _column(cls, v: str) -> str:
        return _check_ident(v, "column")

    @property
    def embedded(self) -> bool:
        return not self.dsn.get_secret_value()


class EmbeddingConfig(_Section):
    """The new model. The first six keys are the seed's, verbatim."""

    model: str = "all-MiniLM-L6-v2"
    model_path: str = "model/all-MiniLM-L6-v2.Q8_0.gguf"
    dimension: int = Field(default=384, gt=0)
    device: Literal["cpu", "cuda", "metal"] = Field(
        default="cpu",
        description="cuda / metal: every layer on the GPU (n_gpu_layers = -1) and each migrator asks Ray for "
        "swarm.gpus_per_migrator GPUs; needs a llama-cpp-python built with that backend",
    )
    batch_size: int = Field(default=32, gt=0, le=4096)
    cache_size: int = Field(default=10_000, ge=0)
    shared_cache: bool = Field(
        default=True,
        description="migrators share computed vectors through the coordinator (up to cache_size of them), so "
        "content repeated across shards is embedded once",
    )
    document_prefix: str = ""
    query_prefix: str = ""
    truncate_dim: int | None = Field(default=None, gt=0)
    max_tokens: int = Field(
        default=512,
        ge=8,
        le=1_048_576,
        description="tokens embedded per text (longer ones are cut and counted); the model's context if smaller. "
        "It sizes the KV cache and llama.cpp's per-token buffers: a 32k-context model at its full context "
        "would reserve tens of GB",
    )
    n_threads: int | None = Field(default=None, gt=0)
    flash_attn: bool = True


class LegacyConfig(_Section):
    """How queries are embedded for the legacy column (the model that filled it)."""

    model: str = "all-MiniLM-L6-v2"
    model_path: str = "model/all-MiniLM-L6-v2.f16.gguf"
    document_prefix: str = ""
    query_prefix: str = ""
    # How the application searches the legacy column's index, so validation measures what it serves. None:
    # the server's current setting (current_setting('ivfflat.probes') / 'hnsw.ef_search'), read per round.
    probes: int | None = Field(default=None, ge=1, le=32768, description="ivfflat.probes of legacy searches")
    ef_search: int | None = Field(default=None, ge=1, le=1000, description="hnsw.ef_search of legacy searches")


class SwarmConfig(_Section):
    topology: str = "hierarchical"
    ray_address: str = ""
    migrators: int = Field(default=2, ge=1, le=256)
    validators: int = Field(default=1, ge=0, le=64)
    threads_per_migrator: int | None = Field(
        default=None,
        ge=1,
        description="llama.cpp threads of a CPU migrator, and the CPUs it asks Ray for (default: the cores of "
        "the largest node shared out among the migrators)",
    )
    gpus_per_migrator: float = Field(
        default=1, gt=0, le=64, description="GPUs each migrator asks Ray for when embedding.device is not cpu"
    )
    shard_rows: int = Field(default=2_000, ge=1)
    max_attempts: int = Field(default=5, ge=1, description="failures of one shard before the migration fails")
    max_rows_per_second: float = Field(default=0, ge=0, description="0: unlimited")
    lock_timeout_ms: int = Field(default=2_000, ge=1)
    follow_interval_s: float = Field(
        default=2.0,
        ge=0,
        description="after completion, how often the coordinator embeds the rows the application changed "
        "since (0: only when orchestrate runs again)",
    )
    idle_in_transaction_timeout_ms: int = Field(
        default=600_000,
        ge=0,
        description="the server ends a swarm session left idle inside a transaction this long (0: never); it must "
        "exceed the model's time for one batch, since a drain embeds inside its transaction",
    )
    ddl_retries: int = Field(default=30, ge=0)
    settle_rows: int = Field(
        default=256,
        ge=0,
        description="the backfill counts as caught up with the application when at most this many changed rows "
        "wait in the queue (or the oldest waits less than settle_seconds); the swarm then keeps following",
    )
    settle_seconds: float = Field(
        default=10.0, ge=0, description="...or when the oldest queued change is younger than this"
    )
    worker_timeout_s: float = Field(
        default=180.0,
        gt=0,
        description="how long the coordinator waits for a vanished data-migrator before pausing the migration "
        "(it resumes by itself when migrators answer again)",
    )
    db_retry_s: float = Field(
        default=30.0,
        gt=0,
        description="how long one database operation is retried through an outage before the coordinator pauses "
        "the migration (it resumes by itself when the database answers again)",
    )
    resume_poll_s: float = Field(
        default=5.0, gt=0, description="how often a paused coordinator looks for what it waits for"
    )
    vacuum_every_rows: int = Field(
        default=1_000_000,
        ge=0,
        description="VACUUM (ANALYZE) the table after this many rows backfilled (and always after the backfill), so "
        "the rows the backfill rewrote are reclaimed; 0: only after the backfill",
    )
    index: Literal["auto", "hnsw", "hnsw-bq", "ivfflat", "none"] = Field(
        default="auto",
        description="auto: hnsw up to 2000 dims, above that the choice measured by `make bench` (bench/highdim.py); "
        "hnsw-bq: hnsw on binary_quantize(column)::bit(D), searches re-ranked by exact distance",
    )
    rerank: int = Field(
        default=200,
        ge=1,
        le=1000,
        description="hnsw-bq: candidates taken from the bit index and re-ranked by exact distance (raised to k)",
    )
    # The ANN index on the new column (built once, at the end of the backfill) and how searches use it (set in
    # each search's transaction, so a change takes effect without a rebuild). pgvector's own limits apply.
    # Defaults measured by `swarm bench --only search` (100k MiniLM-like vectors, k=10): hnsw m=16,
    # ef_construction=200, ef_search=80 gives recall@10 0.958 for ~15% less work per search than m=16,
    # ef_construction=64 at ef_search=100 (recall 0.929); ivfflat (lists = rows/1000 or sqrt(rows)) stays below
    # recall 0.92 at 40 probes and 25+ ms. See bench/README.md.
    hnsw_m: int = Field(default=16, ge=2, le=100, description="hnsw: links per node")
    hnsw_ef_construction: int = Field(default=200, ge=4, le=1000, description="hnsw: candidates while building")
    ef_search: int = Field(default=80, ge=1, le=1000, description="hnsw.ef_search per search (raised to k)")
    probes: int = Field(default=10, ge=1, le=32768, description="ivfflat.probes per search")
    index_build_memory_mb: int = Field(
        default=512, ge=64, le=65536, description="maintenance_work_mem of the index build's session"
    )
    dashboard_host: str = "127.0.0.1"

    @field_validator("topology")
    @classmethod
    def _topology(cls, v: str) -> str:
        if v not in TOPOLOGIES:
            raise ValueError(f"unknown topology; supported: {', '.join(TOPOLOGIES)}")
        return v

    @field_validator("hnsw_ef_construction")
    @classmethod
    def _ef_construction(cls, v: int, info: ValidationInfo) -> int:
        m = info.data.get("hnsw_m")
        if m is not None and v < 2 * m:
            # pgvector refuses the CREATE INDEX otherwise: fail at load time, not after the backfill.
            raise ValueError(f"must be >= 2 * hnsw_m = {2 * m}; raise it or lower hnsw_m")
        return v


class ValidationConfig(_Section):
    queries: str = ".swarm/demo_queries.jsonl"
    k: int = Field(default=10, ge=1, le=1000)
    max_mrr_drop: float = Field(default=0.05, ge=0)
    min_overlap_at_k: float = Field(default=0.3, ge=0, le=1)
    max_error_rate: float = Field(default=0.001, ge=0, le=1)
    max_p95_latency_ms: float = Field(default=50.0, gt=0)
    sample_queries: int = Field(default=200, ge=1, description="queries of the final validation")
    every_percent: float = Field(
        default=10.0,
        ge=0,
        le=100,
        description="a validation round each time this share of the rows more is embedded during the backfill "
        "(0: validate only after it)",
    )
    round_queries: int = Field(default=100, ge=1, description="queries judged by a round during the backfill")
    min_queries: int = Field(
        default=30, ge=1, description="fewer judged queries (in all, or in a slice) cannot decide: INCONCLUSIVE"
    )
    bootstrap_resamples: int = Field(default=2000, ge=100, le=100_000)


class RolloutConfig(_Section):
    steps: list[int] = Field(default_factory=lambda: [10, 25, 50, 100])
    window_seconds: float = Field(default=5.0, gt=0)
    alerts: str = "configs/alerts.yaml"
    webhook_url: str = ""
    use_new: bool = Field(default=True, description="USE_NOMIC_EMBEDDINGS=false sets this to false")
    auto: bool = Field(default=False, description="orchestrate steps through `steps` after validation passes")
    queries_per_step: int = Field(default=200, ge=1, description="replayed queries per step when there is no traffic")
    record_sample: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="share of searches whose latency and outcome are recorded (every search is counted)",
    )
    query_log_days: float = Field(
        default=7.0, gt=0, description="days the per-minute search record (swarm.query_rollup) is kept"
    )

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[int]) -> list[int]:
        if not v or any(not 0 < s <= 100 for s in v) or v != sorted(set(v)):
            raise ValueError("steps must be increasing percentages in 1..100, e.g. [10, 25, 50, 100]")
        return v


class ServingConfig(_Section):
    """How a router (an application's, ``swarm serve``'s) reaches the database and sheds load."""

    pool_size: int = Field(
        default=4, ge=1, le=100, description="most database connections one router (one `swarm serve`) opens"
    )
    pool_min: int = Field(default=1, ge=0, le=100, description="connections kept open when idle")
    pool_timeout_s: float = Field(
        default=3.0, gt=0, le=600, description="wait for a free connection this long, then answer 503 (overloaded)"
    )
    max_inflight: int = Field(
        default=256, ge=1, description="`swarm serve`: searches in progress beyond this are answered 503 at once"
    )
    max_body_bytes: int = Field(default=65_536, ge=256, description="`swarm serve`: larger bodies get 413")
    share_ttl_s: float = Field(default=1.0, gt=0, le=60, description="how old a router's view of the share may be")

    @model_validator(mode="after")
    def _sizes(self) -> ServingConfig:
        if self.pool_min > self.pool_size:
            raise ValueError(f"pool_min {self.pool_min} must be <= pool_size {self.pool_size}")
        return self


class Config(BaseSettings):
    """The whole configuration of one migration."""

    model_config = SettingsConfigDict(
        env_prefix="SWARM_", env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    config_version: int = CONFIG_VERSION
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    legacy: LegacyConfig = Field(default_factory=LegacyConfig)
    swarm: SwarmConfig = Field(default_factory=SwarmConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    # Where the file came from, so relative paths resolve against the project, not the cwd of a Ray worker.
    source: str = Field(default="", exclude=True)
    root: str = Field(default="", exclude=True)

    @classmethod
    def settings_customise_sources(  # type: ignore[override]
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file (init kwargs come from the TOML).
        return (env_settings, init_settings)

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        # Versioned like pgai's vectorizer configs: old files are upgraded here, newer ones refused.
        if isinstance(data, dict):
            version = data.get("config_version", CONFIG_VERSION)
            if isinstance(version, int) and version > CONFIG_VERSION:
                raise ValueError(f"this swarm reads config_version <= {CONFIG_VERSION}; upgrade swarm")
        return data

    @model_validator(mode="after")
    def _cross(self) -> Config:
        if self.database.new_column == self.database.legacy_column:
            raise ValueError("new_column must differ from legacy_column: the legacy column is never written")
        if self.embedding.truncate_dim and self.embedding.truncate_dim > self.embedding.dimension:
            raise ValueError("embedding.truncate_dim must be <= embedding.dimension")
        return self

    # -- paths ---------------------------------------------------------------------------------------------
    def path(self, value: str) -> Path:
        """Resolve a path from the config against the project root (where .swarm/ lives)."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else Path(self.root or ".").resolve() / p

    @property
    def state_dir(self) -> Path:
        return self.path(".swarm")

    @property
    def new_dimension(self) -> int:
        return self.embedding.truncate_dim or self.embedding.dimension

    def to_payload(self, dsn: str) -> dict[str, Any]:
        """What an actor needs to rebuild this config. Passed through ``ray.put`` so that the DSN never shows
        among the actor's arguments in the Ray dashboard."""
        data = self.model_dump(mode="json")
        data["database"]["dsn"] = ""
        return {"config": data, "root": self.root or str(Path.cwd()), "source": self.source, "dsn": dsn}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Config:
        cfg = cls.model_validate({**payload["config"], "root": payload["root"], "source": payload["source"]})
        return cfg

    def public_dict(self) -> dict[str, Any]:
        """The config as JSON-safe data with secrets masked (for the migration record and reports)."""
        data = self.model_dump(mode="json")
        dsn = self.database.dsn.get_secret_value()
        data["database"]["dsn"] = redact_dsn(dsn) if dsn else ""
        return data


def threads_per_migrator(cfg_threads: int | None, migrators: int, cpus: int | None = None) -> int:
    """llama.cpp threads of each migrator: ``swarm.threads_per_migrator``, else the node's cores shared out."""
    return cfg_threads or max(1, (cpus or os.cpu_count() or 1) // max(1, migrators))


def redact_dsn(dsn: str) -> str:
    """Mask a password in a DSN, URL or key=value form."""
    dsn = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1****@", dsn)
    return re.sub(r"(password\s*=\s*)(\S+)", r"\1****", dsn, flags=re.I)


def _fix_for(err: Mapping[str, Any]) -> str:
    etype = err.get("type", "")
    ctx = err.get("ctx") or {}
    if etype == "extra_forbidden":
        return "unknown key; remove it or check its spelling against configs/demo.toml"
    if etype in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[etype]
        bound = next(iter(ctx.values()), "?")
        return f"must be {op} {bound}"
    if etype == "literal_error":
        return f"must be one of {ctx.get('expected', '?')}"
    msg = str(err.get("msg", "invalid value"))
    return msg.removeprefix("Value error, ")


def _raise_config_error(exc: ValidationError, source: str) -> None:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err.get("loc", ())) or "(config)"
    where = f"{source}: " if source else ""
    raise ConfigError(f"{where}{key}", err.get("input"), _fix_for(err)) from None


def load_config(path: str | os.PathLike[str] | None = None, *, default_file: bool = True, **overrides: Any) -> Config:
    """Load a TOML config (default ``configs/demo.toml`` when it exists) with environment overrides.

    ``overrides`` are nested dicts merged over the file (``swarm={"migrators": 4}``), for scripted use;
    ``default_file=False`` with no ``path`` starts from the defaults instead of ``configs/demo.toml``.
    """
    data: dict[str, Any] = {}
    source = ""
    if path is None and default_file and Path(DEFAULT_CONFIG).exists():
        path = DEFAULT_CONFIG
    root = Path.cwd()
    if path is not None:
        p = Path(path)
        source = str(p)
        try:
            with p.open("rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError("--config", source, "file not found; pass an existing TOML file") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError("--config", source, f"not valid TOML ({e}); fix the syntax") from None
        # configs/x.toml lives one level under the project root.
        root = p.resolve().parent.parent if p.resolve().parent.name == "configs" else p.resolve().parent
    for section, values in overrides.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    flag = os.environ.get("USE_NOMIC_EMBEDDINGS")
    try:
        cfg = Config(**data, source=source, root=str(root))
    except ValidationError as e:
        _raise_config_error(e, source)
        raise  # unreachable
    if flag is not None:
        if flag.strip().lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise ConfigError("USE_NOMIC_EMBEDDINGS", flag, "must be true or false")
        cfg.rollout.use_new = flag.strip().lower() in ("1", "true", "yes", "on")
    return cfg
