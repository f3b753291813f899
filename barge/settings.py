"""One settings object for every Barge process (env prefix ``BARGE_``).

With nothing configured Barge runs *embedded*: a SQLite file, kombu's filesystem broker transport
and a local directory as the object store, all under ``./.barge/``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BARGE_", extra="ignore")

    env: Literal["dev", "test", "prod"] = "dev"
    home: Path = Path(".barge")

    # Stores. Empty means "embedded default under `home`".
    database_url: str = ""
    broker_url: str = ""
    storage_backend: Literal["local", "s3"] = "local"
    local_store_dir: Path | None = None
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    allowed_buckets: list[str] = Field(default_factory=list)
    # Tenants' storage scopes, for tenants whose own are not set (`barge tenants update`): URI
    # prefixes with "{tenant}" standing for the tenant's name, or "*" for any allowed bucket. A
    # tenant reads what it may read or write, and writes only under its write scopes.
    tenant_read_scopes: list[str] = Field(default_factory=lambda: ["s3://barge/{tenant}/"])
    tenant_write_scopes: list[str] = Field(default_factory=lambda: ["s3://barge/{tenant}/"])
    local_model_dirs: list[Path] = Field(default_factory=list)

    # Worker.
    cache_dir: Path | None = None
    model_cache_size: int = 2
    # LoRA adapters a worker keeps applied to its warm bases (bases count in model_cache_size).
    adapter_cache_size: int = Field(default=8, ge=1)
    # A running unit's lease, renewed every heartbeat by a thread beside the work (so a long
    # batch or a model load never starves it). A worker that dies stops renewing it: its
    # redelivered message is claimed again as soon as the lease ends, about 10 s later.
    lease_seconds: float = Field(default=10.0, gt=0)
    heartbeat_seconds: float = Field(default=2.0, gt=0)
    # The least time between two reads of a shard's job status (is it cancelled?) between
    # batches: a cancel stops a shard within about this long. Each renewal reads it too, so at
    # or above heartbeat_seconds the status costs no round trip of its own.
    status_check_seconds: float = Field(default=0.25, ge=0, le=600)
    max_attempts: int = 3
    shard_records: int = 10_000
    device: str = ""  # "" = cuda when available, else cpu
    # Inference models load in their stored dtype on CUDA (bf16/fp16 weights stay so), fp32 on
    # CPU. "auto" spreads a model over every visible GPU (layer by layer) when it does not fit
    # one; "" keeps each model on one device.
    device_map: Literal["", "auto", "balanced", "sequential"] = ""
    # Memory a model's weights may take on its device(s), in bytes (0 = what is free there now):
    # a model whose weights need more is refused before anything is loaded.
    model_memory_bytes: int = Field(default=0, ge=0)
    # A shard must finish well inside RabbitMQ's consumer_timeout (30 min by default): past the
    # soft limit it fails with a clear error; at the hard limit its process is killed.
    shard_soft_time_limit: float = 1500.0
    shard_hard_time_limit: float = 1680.0
    # A fine-tune trains in slices of at most this long (and at most 80 % of the soft limit, to
    # leave room for the checkpoint): then it checkpoints, hands its unit of work back and
    # re-queues itself, so no single task nears the time limits above.
    finetune_slice_seconds: float = Field(default=1200.0, gt=0)
    # Prometheus metrics of each pool child on this port + the child's index (0 = off), bound to
    # this address only (never a public interface unless asked: they carry no auth).
    worker_metrics_port: int = 0
    worker_metrics_host: str = "127.0.0.1"

    # Generation (chat, completions, native generate) runs through one engine interface
    # (worker.models.engines): "auto" picks per device what bench/generate.py found fastest (vLLM on
    # CUDA where installed, else transformers' continuous batching; the batched engine off
    # CUDA). The token budget bounds the KV cache an engine holds for the requests in flight
    # (prompt + new tokens, padding counted): the batched engine's batch, the continuous
    # engine's paged cache, vLLM's KV cache; a request that alone needs more is a per-record
    # error. At most generation_max_batch requests are decoded together.
    generation_engine: Literal["auto", "batched", "continuous", "vllm"] = "auto"
    generation_token_budget: int = Field(default=16_384, ge=64)
    generation_max_batch: int = Field(default=256, ge=1)
    # Encoders (embed, classify, text2text, ONNX text inputs) cut their batches by padded tokens
    # over length-sorted windows (a job's max_batch_tokens overrides this): unset, a job's
    # batch_size times its max_length on a GPU (the most a fixed batch could hold), fixed
    # batches on a CPU; 0: fixed batches
    # of batch_size records.
    max_batch_tokens: int | None = Field(default=None, ge=0)

    # Scheduler / reconciler / drop folders.
    reconcile_seconds: float = 15.0
    drop_scan_seconds: float = 5.0
    dispatch_grace_seconds: float = 60.0
    # Retention: the events of a job finished longer ago than this many days are deleted (0:
    # kept forever), with its progress samples (``sample_retention_days``), by a periodic
    # control task every ``retention_seconds``, ``retention_batch`` jobs per transaction.
    event_retention_days: float = Field(default=0.0, ge=0)
    retention_seconds: float = Field(default=3600.0, ge=1.0)
    retention_batch: int = Field(default=500, ge=1, le=100_000)
    # RabbitMQ quorum queues (replicated, for a RabbitMQ cluster) for the gpu and control
    # queues. A queue's type is fixed when it is first declared: switching an existing
    # deployment means deleting the two queues (drained) first.
    broker_quorum_queues: bool = False
    # Celery task events (task-sent, -received, -started, -succeeded), which Flower shows: about
    # four broker messages per shard besides the shard's own. Off, Flower sees workers only.
    broker_task_events: bool = True
    # Connections each process's database pool keeps open, and how many more it may open under
    # load. Behind PgBouncer in transaction mode the pooler multiplexes these.
    database_pool_size: int = Field(default=5, ge=1, le=1000)
    database_max_overflow: int = Field(default=5, ge=0, le=1000)
    # psycopg's server-side prepared statements; false behind PgBouncer in transaction mode.
    database_prepared_statements: bool = True

    # Input bounds, enforced while streaming (at submit and in the worker). A record or a text
    # over its limit is a per-record error; an object over its limit fails the job.
    max_object_bytes: int = Field(default=16 * 2**30, ge=1)  # decompressed bytes per object
    max_record_bytes: int = Field(default=4 * 2**20, ge=1024)  # bytes of one record (line/row)
    max_text_chars: int = Field(default=1_000_000, ge=1)  # characters of one text field
    # Images (image tasks): pixels of one decoded image (more is refused as a decompression
    # bomb, before decoding), bytes of one image object, threads decoding beside the model.
    max_image_pixels: int = Field(default=100_000_000, ge=1)
    max_image_bytes: int = Field(default=64 * 2**20, ge=1)
    image_decode_threads: int = Field(default=2, ge=1, le=64)
    # Concurrent GETs per image shard for images held one per object (or named by URI): a
    # bounded pool a window ahead of decoding; each GET has the store's retries.
    image_fetch_threads: int = Field(default=8, ge=1, le=64)
    # Concurrent GETs of the planner counting the records of a job's input objects (each read
    # whole, but Parquet's footer): a prefix of many small objects is read by this bounded pool.
    input_fetch_threads: int = Field(default=8, ge=1, le=64)
    # Consecutive small input objects (each under the job's shard_size in records) are packed
    # into one shard of at most shard_size records and this many objects; 1 packs nothing.
    pack_max_objects: int = Field(default=1000, ge=1, le=100_000)
    # Bytes of small objects planning keeps of what it read to count them, PUT as one copy per
    # pack beside its listing, so the packed shard reads them with one GET; 0 keeps none.
    pack_copy_bytes: int = Field(default=64 << 20, ge=0, le=1 << 32)
    # Pixels a worker process decodes at once, whatever its threads and shards: a decode waits
    # until its image's pixels fit (an image over the whole budget decodes alone). Decoding and
    # preparing one image peaks at 16 bytes a pixel (barge.records.images.DECODE_BYTES_PER_PIXEL)
    # so decoding adds at most 16 x max(this, BARGE_MAX_IMAGE_PIXELS) bytes: 1.6 GB by default.
    image_decode_pixel_budget: int = Field(default=100_000_000, ge=1)

    # ONNX model directories (model.onnx + barge.json): the largest model.onnx accepted, and the
    # operator domains beyond standard ONNX (and onnxruntime's built-in com.microsoft) a graph
    # may use; any other domain is a custom operator and the model is refused. A graph's output
    # gives at most onnx_max_output_values values for one record (its scores, embedding or
    # values): a record whose output has more is a per-record error.
    onnx_max_bytes: int = Field(default=2**30, ge=1)
    onnx_allowed_op_domains: list[str] = Field(default_factory=list)
    onnx_max_output_values: int = Field(default=262_144, ge=1)

    # API.
    # "json": every process logs one JSON object per line (for log pipelines); "plain": text.
    log_format: Literal["plain", "json"] = "plain"
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    max_metadata_bytes: int = 16_384
    max_body_bytes: int = Field(default=1 * 2**20, ge=1024)  # larger request bodies get a 413
    broker_timeout_seconds: float = 5.0
    # /metrics: when set, a scrape must send `Authorization: Bearer <token>`. Its figures are
    # computed at most once per BARGE_METRICS_CACHE_SECONDS, however often it is scraped.
    metrics_token: str = ""
    metrics_cache_seconds: float = Field(default=5.0, ge=0.0, le=3600.0)

    # Quotas: every tenant's defaults; an admin overrides them per tenant (`tenants.quotas`,
    # checked by services.quotas). Active jobs are queued + running ones.
    quota_max_active_jobs: int = Field(default=100, ge=1)
    quota_max_shards_per_job: int = Field(default=10_000, ge=1)
    quota_max_records_per_job: int = Field(default=100_000_000, ge=1)
    quota_max_finetune_steps: int = Field(default=100_000, ge=1)
    quota_min_checkpoint_seconds: float = Field(default=30.0, ge=1.0)
    # What a tenant may hold: OpenAI files (uploads and the output files Barge writes), their
    # bytes in all, and registered model versions (of every name). An upload or a registration
    # past one is a 429 naming it; a fine-tune is refused at submit when no version is left.
    quota_max_openai_files: int = Field(default=10_000, ge=1)
    quota_max_openai_storage_bytes: int = Field(default=100 * 10**9, ge=1)
    quota_max_model_versions: int = Field(default=10_000, ge=1)

    # The OpenAI-compatible surface (/openai/v1): where a tenant's uploaded files go ("{tenant}"
    # is its name; inside its write scopes), the largest upload, the most requests in one batch,
    # and model names in users' code mapped to Barge models (a registry name or a directory).
    openai_files_prefix: str = "s3://barge/{tenant}/openai-files/"
    openai_max_file_bytes: int = Field(default=200 * 10**6, ge=1)
    openai_max_batch_tasks: int = Field(default=50_000, ge=1)
    openai_model_aliases: dict[str, str] = Field(default_factory=dict)
    # How long the completion window "24h" lasts: a batch unfinished by then expires (what
    # finished is kept; the rest are error-file lines with code batch_expired).
    openai_batch_window_seconds: float = Field(default=24 * 3600.0, gt=0)
    # How /openai/v1/fine_tuning/jobs trains when a request does not say (its ``barge.method``):
    # a LoRA adapter over the frozen base (served warm over a shared base), or every weight.
    openai_fine_tuning_method: Literal["lora", "full"] = "lora"

    # The console (/ui/): session cookies are signed with this secret (at least 32 characters;
    # `python -c "import secrets; print(secrets.token_urlsafe(32))"`). Empty: in dev a random
    # one is made and kept in BARGE_HOME; anywhere else the console stays off until it is set.
    console_secret: str = ""
    console_session_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    # Mark the session cookie Secure (sent over https only). It is set anyway on a request
    # that came over https; set this when a proxy in front terminates TLS.
    console_secure_cookie: bool = False
    # Progress samples (throughput over time): at most one row per job per this many seconds,
    # written from the heartbeats; those of jobs finished longer ago than the retention go.
    sample_seconds: float = Field(default=5.0, ge=1.0, le=3600.0)
    sample_retention_days: float = Field(default=30.0, gt=0)
    # How often each worker process says it is alive (the console's workers page).
    worker_presence_seconds: float = Field(default=15.0, ge=1.0, le=3600.0)
    # An operator's price of one device-hour, by device: "cpu", "cuda" (any NVIDIA GPU) or a
    # GPU's name as NVML gives it (that wins over "cuda"). Empty: no cost estimate.
    price_per_device_hour: dict[str, float] = Field(default_factory=dict)
    price_currency: str = Field(default="USD", min_length=1, max_length=8)

    # Webhooks (/v1/webhooks): the control worker sends due deliveries every
    # webhook_send_seconds; a failed attempt is tried again after retry_base x 2^(n-1) seconds
    # (at most retry_max_seconds apart) until webhook_retry_hours after the event, then given up.
    # A target resolving to a loopback, private, link-local, shared or reserved address (cloud
    # metadata included) is refused unless one of webhook_allowed_networks (CIDRs) holds it.
    webhook_send_seconds: float = Field(default=5.0, gt=0, le=3600.0)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60.0)
    webhook_retry_base_seconds: float = Field(default=30.0, gt=0)
    webhook_retry_max_seconds: float = Field(default=3600.0, gt=0)
    webhook_retry_hours: float = Field(default=24.0, gt=0, le=24 * 7)
    webhook_allowed_networks: list[str] = Field(default_factory=list)
    webhook_secret_grace_hours: float = Field(default=24.0, ge=0, le=24 * 7)
    webhook_max_endpoints: int = Field(default=20, ge=1)
    webhook_retention_days: float = Field(default=30.0, gt=0)

    # Flower (`barge flower`): basic auth is required, so an empty password refuses to start.
    flower_user: str = "admin"
    flower_password: str = ""

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if self.shard_soft_time_limit >= self.shard_hard_time_limit:
            raise ValueError(
                "BARGE_SHARD_SOFT_TIME_LIMIT must be below BARGE_SHARD_HARD_TIME_LIMIT"
            )
        if self.heartbeat_seconds * 2 > self.lease_seconds:
            raise ValueError("BARGE_HEARTBEAT_SECONDS must be at most half of BARGE_LEASE_SECONDS")
        return self

    @model_validator(mode="after")
    def _check_storage(self) -> Settings:
        """Settings that would each say a different store is used are refused, naming both:
        an S3 endpoint picks the S3 backend unless the backend is set, and an explicit
        ``local`` beside an endpoint (or a local directory beside ``s3``) is a contradiction."""
        if self.s3_endpoint_url is not None and not self.s3_endpoint_url.strip():
            self.s3_endpoint_url = None  # BARGE_S3_ENDPOINT_URL= (empty) is "not set"
        if self.s3_endpoint_url is not None:
            if not self.s3_endpoint_url.startswith(("http://", "https://")):
                raise ValueError(
                    "BARGE_S3_ENDPOINT_URL must be an http:// or https:// URL "
                    "(e.g. http://minio:9000)"
                )
            if "storage_backend" not in self.model_fields_set:
                self.storage_backend = "s3"  # an endpoint means S3: never a silent local store
            elif self.storage_backend == "local":
                raise ValueError(
                    "BARGE_S3_ENDPOINT_URL is set but BARGE_STORAGE_BACKEND=local, which would "
                    "ignore it and use the local directory BARGE_LOCAL_STORE_DIR: set "
                    "BARGE_STORAGE_BACKEND=s3 to use the endpoint, or unset "
                    "BARGE_S3_ENDPOINT_URL to use the local store"
                )
        if self.storage_backend == "s3" and self.local_store_dir is not None:
            raise ValueError(
                "BARGE_LOCAL_STORE_DIR is set but BARGE_STORAGE_BACKEND=s3, which never reads "
                "it: unset BARGE_LOCAL_STORE_DIR, or set BARGE_STORAGE_BACKEND=local"
            )
        if self.device_map and self.device.strip().lower().startswith("cpu"):
            raise ValueError(
                f"BARGE_DEVICE_MAP={self.device_map} spreads a model over GPUs but "
                f"BARGE_DEVICE={self.device} loads every model on the CPU, where it is ignored: "
                "unset one of them"
            )
        if self.worker_metrics_port == 0 and "worker_metrics_host" in self.model_fields_set:
            raise ValueError(
                "BARGE_WORKER_METRICS_HOST is set but BARGE_WORKER_METRICS_PORT is 0, so worker "
                "metrics are off: set BARGE_WORKER_METRICS_PORT (e.g. 9101) to serve them, or "
                "unset BARGE_WORKER_METRICS_HOST"
            )
        return self

    @model_validator(mode="after")
    def _check_console(self) -> Settings:
        if self.console_secret and len(self.console_secret) < 32:
            raise ValueError(
                "BARGE_CONSOLE_SECRET must be at least 32 characters (random: python -c "
                '"import secrets; print(secrets.token_urlsafe(32))"), or unset in dev'
            )
        bad = sorted(k for k, v in self.price_per_device_hour.items() if not v >= 0)
        if bad:
            raise ValueError(
                f"BARGE_PRICE_PER_DEVICE_HOUR: the price of {', '.join(bad)} must be a number "
                "of at least 0"
            )
        return self

    @model_validator(mode="after")
    def _check_webhooks(self) -> Settings:
        import ipaddress

        for cidr in self.webhook_allowed_networks:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(
                    f"BARGE_WEBHOOK_ALLOWED_NETWORKS: {cidr!r} is not a network "
                    "(e.g. 10.0.0.0/8 or 127.0.0.1/32)"
                ) from None
        if self.webhook_retry_base_seconds > self.webhook_retry_max_seconds:
            raise ValueError(
                "BARGE_WEBHOOK_RETRY_BASE_SECONDS must be at most BARGE_WEBHOOK_RETRY_MAX_SECONDS"
            )
        return self

    @model_validator(mode="after")
    def _check_prod(self) -> Settings:
        if self.env == "prod":
            missing = [
                name
                for name, value in (
                    ("BARGE_DATABASE_URL", self.database_url),
                    ("BARGE_BROKER_URL", self.broker_url),
                )
                if not value or value.startswith(("sqlite", "filesystem"))
            ]
            if missing or self.storage_backend != "s3":
                raise ValueError(
                    "BARGE_ENV=prod needs a server database, a server broker and "
                    "BARGE_STORAGE_BACKEND=s3; not set or embedded: "
                    + ", ".join(missing or ["BARGE_STORAGE_BACKEND"])
                )
        return self

    @property
    def slice_seconds(self) -> float:
        """How long one fine-tune task trains before it checkpoints and re-queues itself."""
        return min(self.finetune_slice_seconds, 0.8 * self.shard_soft_time_limit)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'barge.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def is_filesystem_broker(self) -> bool:
        return self.resolved_broker_url.startswith("filesystem")

    @property
    def broker_folder(self) -> Path:
        return (self.home / "broker").resolve()

    @property
    def resolved_local_store_dir(self) -> Path:
        return (self.local_store_dir or self.home / "objects").resolve()

    @property
    def resolved_cache_dir(self) -> Path:
        return (self.cache_dir or self.home / "cache").resolve()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
