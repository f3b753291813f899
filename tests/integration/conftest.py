"""Integration tests build jobs and shards straight into the shared test database, with no
messages behind them. A worker of a later test (the session's shared worker) claims fairly across
every tenant's pending work, so rows left unsettled here would take its messages: each test's
unfinished jobs and shards are cancelled when it ends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import update


@pytest.fixture(autouse=True)
def settle_leftover_work(database_url: str) -> Iterator[None]:
    yield
    from barge.status import CANCELLED, FINAL, SHARD_CANCELLED, SHARD_FINAL
    from db.models import Job, Shard
    from db.session import session_scope

    with session_scope(database_url) as session:
        session.execute(
            update(Shard).where(Shard.status.not_in(SHARD_FINAL)).values(status=SHARD_CANCELLED)
        )
        session.execute(update(Job).where(Job.status.not_in(FINAL)).values(status=CANCELLED))
