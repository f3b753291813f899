"""RabbitMQ quorum queues (``BARGE_BROKER_QUORUM_QUEUES``) on the real broker: the gpu and
control queues are declared as quorum queues, a task sent by name lands in its queue, and a
process that disagrees about the type is refused by RabbitMQ (why every process must share
the setting)."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from amqp.exceptions import PreconditionFailed

from barge.queue import CONTROL_QUEUE, GPU_QUEUE, RUN_SHARD, make_celery, ready_messages, send
from barge.settings import Settings
from tests.services import create_vhost, delete_vhost


@pytest.fixture
def vhost() -> Iterator[tuple[str, str]]:
    name = f"barge_quorum_{uuid.uuid4().hex[:8]}"
    url = create_vhost(name)
    if not url.endswith(f"/{name}"):
        pytest.fail("a private RabbitMQ vhost is needed (rabbitmqctl)")
    yield name, url
    delete_vhost(name)


def queue_types(vhost: str) -> dict[str, str]:
    ctl = shutil.which("rabbitmqctl")
    assert ctl, "rabbitmqctl is needed to read a queue's type"
    out = subprocess.run(
        [ctl, "list_queues", "-p", vhost, "--quiet", "--no-table-headers", "name", "type"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return dict(line.split()[:2] for line in out.splitlines() if line.strip())


def declare(url: str, tmp_path: Path, quorum: bool) -> None:
    settings = Settings(env="test", home=tmp_path, broker_url=url, broker_quorum_queues=quorum)
    app = make_celery(settings)
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for queue in app.amqp.queues.values():
            queue.bind(channel).declare()


def test_quorum_queues_are_declared_and_carry_tasks(vhost: tuple[str, str], tmp_path: Path) -> None:
    name, url = vhost
    settings = Settings(env="test", home=tmp_path, broker_url=url, broker_quorum_queues=True)
    declare(url, tmp_path, quorum=True)
    types = queue_types(name)
    assert types[GPU_QUEUE] == "quorum" and types[CONTROL_QUEUE] == "quorum"
    app = make_celery(settings)
    send(app, RUN_SHARD, str(uuid.uuid4()), str(uuid.uuid4()), 0)
    assert ready_messages(app, (GPU_QUEUE,), 5.0) == {GPU_QUEUE: 1}


def test_classic_is_the_default_and_a_mismatch_is_refused(
    vhost: tuple[str, str], tmp_path: Path
) -> None:
    name, url = vhost
    declare(url, tmp_path, quorum=False)
    assert queue_types(name)[GPU_QUEUE] == "classic"
    with pytest.raises(PreconditionFailed):
        declare(url, tmp_path, quorum=True)
