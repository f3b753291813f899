"""Real services for the tests: a fresh Postgres database built by the migrations, a RabbitMQ
vhost, moto's S3 HTTP server, real Barge worker processes, and a webhook receiver."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy

ADMIN_PG = os.environ.get(
    "BARGE_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
AMQP_BASE = os.environ.get("BARGE_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def create_database(name: str, template: str | None = None) -> str:
    """A new, empty database (or a copy of ``template``), dropped first if it exists."""
    copy = f' TEMPLATE "{template}"' if template else ""
    engine = sqlalchemy.create_engine(ADMIN_PG, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"{copy}'))
    engine.dispose()
    return ADMIN_PG.rsplit("/", 1)[0] + f"/{name}"


def drop_database(name: str) -> None:
    engine = sqlalchemy.create_engine(ADMIN_PG, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


_TEMPLATES: dict[str, str] = {}  # this process's migrated template database, by run


def create_migrated_database(name: str, run: str) -> str:
    """A fresh database at the newest schema, copied from a template that the migrations built
    once for this process (``CREATE DATABASE ... TEMPLATE``: a file copy, instead of running
    every migration again for each test that needs a database of its own)."""
    template = _TEMPLATES.get(run)
    if template is None:
        from db.migrate import upgrade
        from db.session import get_engine

        template = f"barge_template_{run}_{os.getpid()}"
        url = create_database(template)
        upgrade(url)  # the schema comes from the migrations, nothing else
        get_engine(url).dispose()  # a template must have no connections when it is copied
        _TEMPLATES[run] = template
    return create_database(name, template)


def drop_templates() -> None:
    for template in _TEMPLATES.values():
        drop_database(template)
    _TEMPLATES.clear()


class VhostPool:
    """RabbitMQ vhosts for tests that each need a broker of their own, reused: creating and
    deleting a vhost takes three `rabbitmqctl` runs (about a second each), while emptying one
    for the next test is deleting its queues over AMQP. Each process keeps its own pool."""

    QUEUES = ("gpu", "control")  # the durable queues Barge declares; the rest auto-delete

    def __init__(self, run: str):
        self.run = run
        self.free: list[str] = []
        self.made: list[str] = []

    def lease(self) -> str:
        if self.free:
            return self.free.pop()
        name = f"barge_pool_{self.run}_{os.getpid()}_{len(self.made)}"
        url = create_vhost(name)
        if url == AMQP_BASE:  # no rabbitmqctl: the default vhost, shared; nothing to reuse
            return url
        self.made.append(name)
        return url

    def release(self, url: str) -> None:
        """Empty the vhost (its queues and their messages deleted) and keep it for the next."""
        if url == AMQP_BASE:
            return
        from kombu import Connection

        with Connection(url, connect_timeout=10) as conn:
            channel = conn.channel()
            for queue in self.QUEUES:
                channel.queue_delete(queue)
        self.free.append(url)

    def close(self) -> None:
        for name in self.made:
            delete_vhost(name)
        self.made.clear()
        self.free.clear()


def create_vhost(name: str) -> str:
    """A private RabbitMQ vhost (via rabbitmqctl), or the default vhost when that is unavailable."""
    ctl = shutil.which("rabbitmqctl")
    if ctl:
        try:
            subprocess.run([ctl, "add_vhost", name], check=True, capture_output=True, timeout=60)
            subprocess.run(
                [ctl, "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
                check=True,
                capture_output=True,
                timeout=60,
            )
            parts = urlsplit(AMQP_BASE)
            return f"{parts.scheme}://{parts.netloc}/{name}"
        except (subprocess.SubprocessError, OSError):
            pass
    return AMQP_BASE


def delete_vhost(name: str) -> None:
    ctl = shutil.which("rabbitmqctl")
    if ctl:
        subprocess.run([ctl, "delete_vhost", name], capture_output=True, timeout=60)


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class MotoServer:
    def __init__(self, log: Path):
        self.port = free_port()
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def child_pids(pid: int) -> list[int]:
    """The children of process ``pid`` (of any of its threads)."""
    pids: set[int] = set()
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):  # the process or thread ended meanwhile
            pids |= {int(p) for p in children.read_text().split()}
    return sorted(pids)


@dataclass
class WorkerProcess:
    """A real `barge worker` in its own process group: for both queues (the default), a
    supervisor of a GPU worker (Celery prefork, one child) and a control worker (two children);
    for one queue, that Celery worker itself."""

    env: dict[str, str]
    log: Path
    name: str = field(default_factory=lambda: f"w{uuid.uuid4().hex[:6]}")
    queues: str = "gpu,control"
    args: tuple[str, ...] = ()  # more `barge worker` options, e.g. ("--gpu", "1")
    named: bool = True  # False: Barge's default node names, no --hostname
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> WorkerProcess:
        offset = self.log.stat().st_size if self.log.exists() else 0
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli",
                "worker",
                "--queues",
                self.queues,
                *(("--hostname", f"{self.name}@%h") if self.named else ()),
                *self.args,
            ],
            env=self.env,
            cwd=ROOT,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            with self.log.open("rb") as f:
                f.seek(offset)
                if f.read().count(b" ready.") >= len(self.kinds):  # one per Celery worker
                    return self
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready after {timeout}s:\n{self.tail()}")

    @property
    def kinds(self) -> set[str]:
        return {q.strip() for q in self.queues.split(",") if q.strip()}

    def celery_pids(self) -> list[int]:
        """The Celery worker main processes: this one, or the supervisor's children."""
        assert self.proc is not None
        return [self.proc.pid] if len(self.kinds) == 1 else child_pids(self.proc.pid)

    def pool_pids(self) -> list[int]:
        """The prefork pool processes (where tasks run) of every Celery worker of this one."""
        return sorted(pid for main in self.celery_pids() for pid in child_pids(main))

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to the worker's process group (a warm shutdown), SIGKILL after ``timeout``;
        then SIGKILL to whatever of the group is left (a pool process whose main process a
        test killed), so nothing of it outlives the test on a broker or database reused."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1:``port`` (``http.server``, a thread per request),
    keeping every request it answers 200 (``got``: headers, body) and every request it saw
    (``seen``); it answers ``codes`` in turn, then 200 (a 3xx pointing at ``location``). While ``holding``, a request waits
    unanswered until ``release`` is set. Stopped and started again on the same port."""

    port: int
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)
    holding: bool = False
    location: str | None = None  # where a 3xx answer points
    release: threading.Event = field(default_factory=threading.Event)
    seen: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = ({k.lower(): v for k, v in self.headers.items()}, body)
                receiver.seen.append(request)
                if receiver.holding:
                    receiver.release.wait(120)
                code = receiver.codes.pop(0) if receiver.codes else 200
                answer = b"ok" if code == 200 else b"busy, try later " + b"x" * 2000
                try:
                    self.send_response(code)
                    if 300 <= code < 400 and receiver.location:
                        self.send_header("Location", receiver.location)
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:
                    return  # the sender went away
                if code == 200:
                    receiver.got.append(request)

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()  # held requests end
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def events(
        self, secret: str, requests: list[tuple[dict[str, str], bytes]] | None = None
    ) -> list[Any]:
        """Every delivery answered 200 (or ``requests``), verified and parsed by the official
        ``openai`` client."""
        import openai

        client = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/")
        return [
            client.webhooks.unwrap(body, headers, secret=secret)
            for headers, body in (self.got if requests is None else requests)
        ]
