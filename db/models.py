"""The schema. Alembic migrations in ``migrations/`` are the only way it reaches a database."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from barge.records.packs import describe as describe_pack
from db.base import Base, JSONType, UTCDateTime, utcnow


class Tenant(Base):
    """A tenant: its jobs, models and drop rules, and the storage it may reach.

    ``read_scopes`` / ``write_scopes`` are URI prefixes (``s3://bucket/path/``, or ``*`` for any
    allowed bucket); NULL means the settings' templates (``BARGE_TENANT_READ_SCOPES`` /
    ``BARGE_TENANT_WRITE_SCOPES``) rendered with the tenant's name. ``quotas`` overrides the
    settings' default quotas, limit by limit."""

    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    read_scopes: Mapped[list[str] | None] = mapped_column(JSONType)
    write_scopes: Mapped[list[str] | None] = mapped_column(JSONType)
    quotas: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, server_default="{}")
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, onupdate=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # "member" submits and reads its tenant's work; "admin" also manages tenants, scopes, keys,
    # quotas and reads the audit log.
    role: Mapped[str] = mapped_column(String(16), default="member", server_default="member")
    name: Mapped[str | None] = mapped_column(String(200))  # a label, e.g. "ci" or "alice"
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    tenant: Mapped[Tenant] = relationship(lazy="raise")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_jobs_status", "status"),
        Index("ix_jobs_tenant_status", "tenant_id", "status"),  # active jobs, for the quota
        # Retention: finished jobs whose events were not pruned yet.
        Index(
            "ix_jobs_events_to_prune",
            "finished_at",
            postgresql_where=text("finished_at IS NOT NULL AND events_pruned_at IS NULL"),
            sqlite_where=text("finished_at IS NOT NULL AND events_pruned_at IS NULL"),
        ),
        # The reconciler's finalize pass: jobs without a manifest.
        Index(
            "ix_jobs_unfinalized",
            "status",
            postgresql_where=text("manifest IS NULL"),
            sqlite_where=text("manifest IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(32), default="queued")
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    model_uri: Mapped[str | None] = mapped_column(Text)  # the spec's model, resolved
    # When the model is a LoRA adapter: the resolved location of the base it applies to.
    adapter_base_uri: Mapped[str | None] = mapped_column(Text)
    output_uri: Mapped[str] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    records_total: Mapped[int | None] = mapped_column(BigInteger)
    shards_total: Mapped[int | None] = mapped_column(Integer)
    steps_total: Mapped[int | None] = mapped_column(BigInteger)  # fine-tunes: optimizer steps
    # Planning runs started (each counted before it starts, so one that kills its process counts
    # too); a job still queued after BARGE_MAX_ATTEMPTS of them fails.
    plan_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    manifest: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A retry (``POST /v1/jobs/{id}/retry``): the job whose failed records it runs again, and
    # its number among that job's retries (its output is ``<parent output>retry-N/``).
    parent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), index=True
    )
    retry_index: Mapped[int | None] = mapped_column(Integer)
    # When retention deleted the finished job's events (BARGE_EVENT_RETENTION_DAYS).
    events_pruned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Throughput(Base):
    """What a model reached on a kind of device, summed over the inference shards that
    succeeded there (fed as each settles): the records they read and the seconds their
    attempts processed them, cold start left out; apart, the shards that paid a cold start
    (``loads``: a process's first imports, fetching and loading the model) and its seconds.
    A dry run's estimate is made from it. (Rows summed before 0020 hold cold starts in
    ``seconds``.)"""

    __tablename__ = "throughput"

    model: Mapped[str] = mapped_column(Text, primary_key=True)  # the job's resolved model
    task: Mapped[str] = mapped_column(String(32), primary_key=True)
    device: Mapped[str] = mapped_column(String(200), primary_key=True)  # the device's name
    shards: Mapped[int] = mapped_column(BigInteger)
    records: Mapped[int] = mapped_column(BigInteger)
    seconds: Mapped[float] = mapped_column(Float)  # processing: the shards' wall less loads
    tokens_out: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    loads: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    load_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Shard(Base):
    """One unit of work: a byte or record range of one input object, a pack of small objects
    (a byte range of the job's pack listing), or a whole fine-tune.

    ``attempt`` is the fencing token: a claim increments it, and only the holder of the current
    attempt may heartbeat or mark the shard done. ``not_before``: a shard given back after a
    failed attempt is not claimed again before its back-off ends.
    """

    __tablename__ = "shards"
    __table_args__ = (
        UniqueConstraint("job_id", "index"),
        Index("ix_shards_status_lease", "status", "lease_expires_at"),
        # The fair claim: a job's next unsettled shard, and when its tenant was last served.
        Index(
            "ix_shards_unsettled",
            "job_id",
            "index",
            postgresql_where=text("status IN ('pending', 'running')"),
            sqlite_where=text("status IN ('pending', 'running')"),
        ),
        Index("ix_shards_job_started", "job_id", "started_at"),
        # The reconciler's re-send over a backlog: pending shards, longest unsent first.
        Index(
            "ix_shards_pending_dispatched",
            text("dispatched_at NULLS FIRST"),  # the re-send's order: never sent, then oldest
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(32), default="pending")
    source_uri: Mapped[str] = mapped_column(Text)
    # The object's ETag and size as planning found them: every read of the object is
    # conditional on that ETag (a changed object fails the shard), and with the size no HEAD is
    # needed. "" and NULL: not known (a pack's listing; shards planned before this was kept).
    source_etag: Mapped[str] = mapped_column(String(200), default="")
    source_size: Mapped[int | None] = mapped_column(BigInteger)
    input_format: Mapped[str] = mapped_column(String(16))
    compressed: Mapped[bool] = mapped_column(default=False)
    start_record: Mapped[int] = mapped_column(BigInteger)
    record_count: Mapped[int] = mapped_column(BigInteger)
    record_offset: Mapped[int] = mapped_column(BigInteger)  # job-wide position of 1st record
    first_line: Mapped[int] = mapped_column(BigInteger)
    byte_start: Mapped[int | None] = mapped_column(BigInteger)
    byte_end: Mapped[int | None] = mapped_column(BigInteger)
    # A packed shard (input_format "pack", barge.records.packs): ``source_uri`` is its listing,
    # the byte range its entries; these say what it reads for views: how many objects, the
    # first and the last. NULL for a shard of one object.
    pack_objects: Mapped[int | None] = mapped_column(Integer)
    pack_first: Mapped[str | None] = mapped_column(Text)
    pack_last: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    # Claims that ended in a clean hand-off (a fine-tune's time slice), not a failure: attempts
    # minus hand-offs is what counts against BARGE_MAX_ATTEMPTS.
    handoffs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    worker: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)
    records_succeeded: Mapped[int] = mapped_column(BigInteger, default=0)
    records_failed: Mapped[int] = mapped_column(BigInteger, default=0)
    steps_done: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    usage: Mapped[dict[str, int] | None] = mapped_column(JSONType)  # token counts, summed
    # Tokens generated so far by the current attempt (heartbeats write it; progress samples sum it).
    tokens_out: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    output_key: Mapped[str | None] = mapped_column(Text)
    errors_key: Mapped[str | None] = mapped_column(Text)
    last_error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    @property
    def source_shown(self) -> str:
        """Its input as messages and views name it: its object, or a pack's objects (how
        many, the first and the last) and listing."""
        if self.pack_objects is None:
            return self.source_uri
        return describe_pack(self.source_uri, self.pack_objects, self.pack_first, self.pack_last)


class ShardAttempt(Base):
    """One attempt at a shard: which worker held it, when, how it ended, and what it used.

    Written when the attempt claims the shard and when it ends (``outcome`` NULL until then: a
    worker that died leaves it NULL, and ``seen_at``, noted with the progress samples, says
    when it was last alive). Usage: wall, busy (model compute), CPU and GPU seconds, tokens,
    and the energy NVIDIA's counter measured (NULL where the device has none)."""

    __tablename__ = "shard_attempts"
    __table_args__ = (
        Index("ix_shard_attempts_job_id_started_at", "job_id", "started_at"),
        Index("ix_shard_attempts_worker_started_at", "worker", "started_at"),
    )

    shard_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("shards.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    worker: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # succeeded, cancelled, failed, error (retried), handed_off, lease_lost; NULL: running, or
    # its worker died
    outcome: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    records_succeeded: Mapped[int] = mapped_column(BigInteger, default=0)
    records_failed: Mapped[int] = mapped_column(BigInteger, default=0)
    steps_done: Mapped[int | None] = mapped_column(BigInteger)
    device: Mapped[str | None] = mapped_column(String(64))  # "cuda:0", "cuda:0,cuda:1", "cpu"
    device_name: Mapped[str | None] = mapped_column(String(200))  # "NVIDIA H100 80GB HBM3"
    gpus: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    wall_seconds: Mapped[float | None] = mapped_column(Float)
    # Of the wall seconds, the cold start's: a first import of the kind's run step, fetching
    # and loading the model (0 when it was warm; NULL before 0020 and for attempts not measured).
    load_seconds: Mapped[float | None] = mapped_column(Float)
    busy_seconds: Mapped[float | None] = mapped_column(Float)
    cpu_seconds: Mapped[float | None] = mapped_column(Float)
    gpu_seconds: Mapped[float | None] = mapped_column(Float)
    energy_joules: Mapped[float | None] = mapped_column(Float)
    # Per device: {"device", "name", "energy_joules"} (energy NULL where it has no counter).
    devices: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)
    tokens_in: Mapped[int | None] = mapped_column(BigInteger)
    tokens_out: Mapped[int | None] = mapped_column(BigInteger)


class JobSample(Base):
    """A job's progress at one moment, for its throughput over time: written from the shards'
    heartbeats, at most one per job per ``slot`` (``BARGE_SAMPLE_SECONDS`` long), summed over
    its shards as they were then. Pruned once the job finished longer ago than
    ``BARGE_SAMPLE_RETENTION_DAYS``."""

    __tablename__ = "job_samples"

    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    slot: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    records_succeeded: Mapped[int] = mapped_column(BigInteger)
    records_failed: Mapped[int] = mapped_column(BigInteger)
    steps_done: Mapped[int] = mapped_column(BigInteger)
    tokens_out: Mapped[int] = mapped_column(BigInteger)
    shards_running: Mapped[int] = mapped_column(Integer)


class WorkerPresence(Base):
    """A live worker process (a pool child), as it last said: its queues, device, the models
    it holds warm. Written at its start and every ``BARGE_WORKER_PRESENCE_SECONDS``; removed
    when it stops cleanly; one not seen for a day is pruned."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)  # host:pid, as shards name it
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[list[str]] = mapped_column(JSONType)
    device: Mapped[str | None] = mapped_column(String(64))
    device_name: Mapped[str | None] = mapped_column(String(200))
    # Warm models: {"model", "task", "kind"} (kind: model, base, adapter).
    models: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime)


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(64))
    from_status: Mapped[str | None] = mapped_column(String(32))
    to_status: Mapped[str | None] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class Model(Base):
    """The model registry: named, versioned model directories (filled by fine-tune jobs)."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("tenant_id", "name", "version"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    uri: Mapped[str] = mapped_column(Text)
    task: Mapped[str] = mapped_column(String(32))
    base_model: Mapped[str | None] = mapped_column(Text)
    # A LoRA adapter (``uri`` holds adapter_config.json and its weights): the resolved location
    # of the base it applies to. None: ``uri`` is a full model directory.
    adapter_base_uri: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DropRule(Base):
    """An S3 drop folder: a new object under ``<prefix>incoming/`` becomes one job."""

    __tablename__ = "drop_rules"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(Text)  # s3://bucket/path/ (ends with /)
    template: Mapped[dict[str, Any]] = mapped_column(JSONType)
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEntry(Base):
    """The audit log: append-only, one row per change a key made (submissions, cancels,
    registrations, drop rules, keys, scopes, quotas). Never updated or deleted by Barge."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_at", "at"),
        Index("ix_audit_log_tenant_id_at", "tenant_id", "at"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Who acted: the tenant (kept by name too, should the tenant row go) and the key's prefix.
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="SET NULL")
    )
    tenant_name: Mapped[str] = mapped_column(String(200))
    key_prefix: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))  # e.g. "job.submit", "key.revoke"
    target: Mapped[str] = mapped_column(Text, default="")  # e.g. a job id, "tenant:acme"
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class DropObject(Base):
    """One dropped object, seen once: (rule, key, ETag) is the idempotency key."""

    __tablename__ = "drop_objects"
    __table_args__ = (
        UniqueConstraint("rule_id", "key", "etag"),
        Index("ix_drop_objects_status", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    rule_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("drop_rules.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(Text)
    etag: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(Text)
    # submitted → (job final) → done | failed;  rejected objects go straight to failed
    status: Mapped[str] = mapped_column(String(32), default="submitted")
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class OpenAIFile(Base):
    """A file of the OpenAI-compatible surface: an upload, or a batch's output or error file.
    The object lives at ``uri`` (under the tenant's ``BARGE_OPENAI_FILES_PREFIX``)."""

    __tablename__ = "openai_files"
    __table_args__ = (Index("ix_openai_files_tenant_created", "tenant_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(512))
    bytes: Mapped[int] = mapped_column(BigInteger)
    uri: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OpenAIBatch(Base):
    """An OpenAI batch: its input file checked line by line, then run as a Barge job
    (``job_id``); a batch refused at validation has ``status`` "failed" and no job."""

    __tablename__ = "openai_batches"
    __table_args__ = (Index("ix_openai_batches_tenant_created", "tenant_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), unique=True
    )
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(16))
    model: Mapped[str | None] = mapped_column(Text)  # as named in the request bodies
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)
    status: Mapped[str | None] = mapped_column(String(32))  # set only when it failed validation
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)
    total: Mapped[int] = mapped_column(Integer, default=0)
    output_file_id: Mapped[str | None] = mapped_column(String(64))
    error_file_id: Mapped[str | None] = mapped_column(String(64))
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    cancelling_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the completion window ended with the job unfinished (its job was cancelled then), and
    # how many requests it left unrun (each an error-file line with code batch_expired).
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expired_requests: Mapped[int | None] = mapped_column(Integer)
    # How many requests a cancelled batch left unrun (each an error-file line, batch_cancelled).
    cancelled_requests: Mapped[int | None] = mapped_column(Integer)
    # A retry (Barge's extension): the batch whose failed requests it runs again.
    retry_of: Mapped[str | None] = mapped_column(String(64), index=True)


class OpenAIFineTuningJob(Base):
    """A fine-tuning job of the OpenAI-compatible surface: its files checked when it was created,
    then run as a Barge fine-tune job (``job_id``); status, events and checkpoints are read from
    that job, and ``fine_tuned_model`` from the version it registered."""

    __tablename__ = "openai_fine_tuning_jobs"
    __table_args__ = (
        Index("ix_openai_fine_tuning_jobs_tenant_created", "tenant_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), unique=True
    )
    model: Mapped[str] = mapped_column(Text)  # as named in the request
    training_file_id: Mapped[str] = mapped_column(String(64))
    validation_file_id: Mapped[str | None] = mapped_column(String(64))
    suffix: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(BigInteger)
    # {n_epochs, batch_size, learning_rate_multiplier} as resolved ("auto" made a number)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSONType)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The results file (metrics by step, CSV) written when the job succeeded.
    result_file_id: Mapped[str | None] = mapped_column(String(64))
    # The job's own secret (AES-128, hex) that seals the ids of its events and checkpoints.
    id_key: Mapped[str] = mapped_column(String(64))


class WebhookEndpoint(Base):
    """A tenant's webhook endpoint: where the events it subscribed to are sent, signed with its
    secret (``whsec_<base64>``, Standard Webhooks). After a rotation the previous secret signs
    too until ``previous_secret_until``."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (
        Index("ix_webhook_endpoints_tenant_id_created_at", "tenant_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # whep_<hex>
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSONType)
    secret: Mapped[str] = mapped_column(String(128))
    previous_secret: Mapped[str | None] = mapped_column(String(128))
    previous_secret_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookDelivery(Base):
    """One event for one endpoint, from the outbox: written in the transaction that changed the
    job's status, then sent (and re-sent with back-off) by the control worker. ``id`` is the
    ``webhook-id`` header, the same on every attempt (receivers deduplicate by it); ``body`` is
    the exact JSON signed. ``attempts_log``: the last attempts, each with its status code (or
    error) and an excerpt of the answer. Those settled longer than
    ``BARGE_WEBHOOK_RETENTION_DAYS`` ago are pruned."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_endpoint_id_created_at", "endpoint_id", "created_at"),
        Index("ix_webhook_deliveries_created_at", "created_at"),  # pruning
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # wh_<hex>: webhook-id
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(64))  # evt_<hex>, the body's id
    event_type: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    body: Mapped[str] = mapped_column(Text)
    # pending → delivered | failed (given up after BARGE_WEBHOOK_RETRY_HOURS)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    attempts_log: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
