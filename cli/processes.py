"""Process supervision: ``barge api|worker|scheduler|flower`` and ``barge up``.

Each server command builds the process's argv and execs it, by module name (``api.app``,
``worker.celery_app``), so this module never imports the API or the worker. ``worker`` runs one
Celery worker per kind of work, so that control work never waits behind a shard: ``gpu``
(prefork, one child per GPU) and ``control`` (planning, finalizing, reconciling, drop scans;
never loads a model); with both it supervises the two as child processes. ``up`` runs the
stack (api + both workers + scheduler) as child processes, on the configured stores or the
embedded ones, and stops them together.

Several ``barge worker`` processes run on one host (one per GPU, ``--gpu N``), so each Celery
worker's default node name is unique on its host: ``gpu-<N>@host`` with ``--gpu N``, else
``gpu-<pid>@host`` (``control-...`` alike). A name is what RabbitMQ locks a worker's
remote-control queue by, and what Flower lists; leases and shard rows never use it.

Imports: ``cli.admin`` (``up`` brings the schema up first), ``cli.client``, ``db`` (the schema
check before a worker starts) and the kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from celery.utils.nodenames import host_format
from sqlalchemy.exc import SQLAlchemyError

from barge import logs
from barge.queue import CONTROL_QUEUE, GPU_QUEUE, make_celery
from barge.settings import Settings, get_settings
from cli.admin import database_name, db_upgrade
from cli.client import ApiError, Client
from db.migrate import SchemaNotCurrent
from db.session import dispose_engines, require_current_schema


def _celery_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", *args]


WORKER_QUEUES = (GPU_QUEUE, CONTROL_QUEUE)
CONTROL_CONCURRENCY = 2  # a long plan never holds up reconciling, finalizing or the drop scans


def worker_queues(queues: str) -> list[str]:
    """The kinds of work ``--queues`` names, each once, GPU first; ValueError for anything else."""
    names = {q.strip() for q in queues.split(",") if q.strip()}
    if not names or names - set(WORKER_QUEUES):
        raise ValueError(f"--queues takes gpu, control or gpu,control, not {queues!r}")
    return [q for q in WORKER_QUEUES if q in names]


def default_node_name(queue: str, gpu: int | None = None) -> str:
    """``<queue>-<gpu>@%h`` for a worker pinned to a GPU, else ``<queue>-<pid>@%h``: unique
    among the workers of one host (``%h``, the host name, is filled in by Celery)."""
    return f"{queue}-{gpu if gpu is not None else os.getpid()}@%h"


def worker_argv(
    queue: str = GPU_QUEUE, concurrency: int = 1, hostname: str | None = None
) -> list[str]:
    """One Celery worker (prefork) consuming one queue, named ``default_node_name`` by default."""
    return _celery_argv(
        "worker",
        "--loglevel",
        "INFO",
        "--pool",
        "prefork",
        "--concurrency",
        str(concurrency),
        "-Q",
        queue,
        "--hostname",
        hostname or default_node_name(queue),
        "--without-gossip",
        "--without-mingle",
    )


def worker_argvs(
    queues: str = "gpu,control",
    concurrency: int = 1,
    control_concurrency: int = CONTROL_CONCURRENCY,
    hostname: str | None = None,
    gpu: int | None = None,
) -> dict[str, list[str]]:
    """One Celery worker per kind of work in ``queues``, by queue, each named
    ``default_node_name(queue, gpu)``. With both kinds, a given ``--hostname name@host``
    becomes ``name-gpu@host`` and ``name-control@host``."""
    if gpu is not None and gpu < 0:
        raise ValueError(f"--gpu takes a GPU index (0, 1, ...), not {gpu}")
    kinds = worker_queues(queues)
    argvs = {}
    for queue in kinds:
        name = hostname or default_node_name(queue, gpu)
        if hostname and len(kinds) > 1:
            node, at, host = hostname.partition("@")
            name = f"{node}-{queue}{at}{host}"
        n = concurrency if queue == GPU_QUEUE else control_concurrency
        argvs[queue] = worker_argv(queue, n, name)
    return argvs


def node_name(argv: list[str]) -> str | None:
    """The node name of the Celery worker ``argv`` runs, as Celery fills it in (``%h``: this
    host), or None when it runs no worker."""
    return host_format(argv[argv.index("--hostname") + 1]) if "--hostname" in argv else None


def node_running(settings: Settings, nodename: str) -> bool:
    """Whether a Celery worker named ``nodename`` is connected to the broker now. Such a worker
    holds the exclusive queue ``<nodename>.celery.pidbox`` (its remote control) that a second
    worker of that name fails to declare (RabbitMQ's RESOURCE_LOCKED): asked here passively.
    False when the broker does not answer (the worker itself then says so)."""
    if settings.is_filesystem_broker:
        return False  # no remote control there: no such queue, no clash
    with make_celery(settings, name="barge-cli").connection_for_write() as conn:
        try:
            conn.ensure_connection(max_retries=1, timeout=settings.broker_timeout_seconds)
            declared = conn.default_channel.queue_declare(
                queue=f"{nodename}.celery.pidbox", passive=True
            )
        except conn.channel_errors as exc:
            return getattr(exc, "code", None) == 405  # locked by a live worker; 404: no worker
        except Exception:
            return False
    return bool(declared.consumer_count)


def worker_problem(settings: Settings, argvs: dict[str, list[str]], named: bool) -> str | None:
    """Why these workers must not start, or None: the database's schema is not current (a
    database that does not answer yet is left to the worker, which waits for it), or, for names
    that are not unique by construction (``--gpu``, ``--hostname``), one is running already."""
    try:
        require_current_schema(settings.resolved_database_url)
    except SchemaNotCurrent as exc:
        return exc.message
    except SQLAlchemyError:
        pass
    finally:
        dispose_engines()  # nothing of this process's pool reaches the workers
    if not named:
        return None  # named after this process: no other worker of the host has its names
    for argv in argvs.values():
        name = node_name(argv)
        if name and node_running(settings, name):
            return (
                f"a worker named {name} is already running on this broker: give each worker "
                "on a host its own --gpu N (one per GPU), or name this one with --hostname "
                "NAME@%h"
            )
    return None


def scheduler_argv() -> list[str]:
    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    schedule = (settings.home / "celerybeat-schedule").resolve()
    return _celery_argv("beat", "--loglevel", "INFO", "--schedule", str(schedule))


def flower_argv(address: str, port: int, purge_offline_workers: int) -> list[str]:
    # Not persistent: jobs live in Postgres, and Flower's state file would need a writable cwd.
    # worker.flower is `celery` with Flower's /metrics and /healthcheck behind its auth too.
    return [
        sys.executable,
        "-m",
        "worker.flower",
        "-A",
        "worker.celery_app",
        "flower",
        f"--address={address}",
        f"--port={port}",
        f"--purge_offline_workers={purge_offline_workers}",
        "--persistent=False",
    ]


def flower_basic_auth(settings: Settings) -> str:
    """``user:password`` for Flower's ``FLOWER_BASIC_AUTH``; ValueError when it is unusable."""
    user, password = settings.flower_user, settings.flower_password
    if not password:
        raise ValueError(
            "BARGE_FLOWER_PASSWORD is not set; Flower never runs without authentication"
        )
    if not user or ":" in user:
        raise ValueError("BARGE_FLOWER_USER must be non-empty and must not contain ':'")
    if "," in user + password:
        # Flower splits FLOWER_BASIC_AUTH on commas into several user:password pairs.
        raise ValueError("BARGE_FLOWER_USER and BARGE_FLOWER_PASSWORD must not contain ','")
    return f"{user}:{password}"


def api_log_config(settings: Settings) -> Path:
    """The uvicorn logging config of ``barge api`` (where it listens, one access line per
    request; BARGE_LOG_FORMAT), written under BARGE_HOME."""
    settings.home.mkdir(parents=True, exist_ok=True)
    path = (settings.home / f"api-logging-{settings.log_format}.json").resolve()
    path.write_text(json.dumps(logs.uvicorn_config(settings.log_format), indent=2))
    return path


def api_argv(host: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "api.app:create_app",
        "--host",
        host,
        "--port",
        str(port),
        "--log-config",
        str(api_log_config(get_settings())),
    ]


def port_taken(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (another process holds it), or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return (
                f"cannot listen on {host}:{port}: {exc.strerror or exc}; another process "
                "holds that port: stop it, or choose another with --port"
            )
    return None


def _host_port(args: argparse.Namespace) -> tuple[str, int]:
    settings = get_settings()
    return args.host or settings.api_host, args.port or settings.api_port


def cmd_api(args: argparse.Namespace) -> int:
    host, port = _host_port(args)
    problem = port_taken(host, port)
    if problem:
        print(f"barge api: {problem}", file=sys.stderr)
        return 2
    os.execv(sys.executable, api_argv(host, port))


def pin_to_gpu(settings: Settings, gpu: int, concurrency: int) -> None:
    """``--gpu N``, in the environment the Celery workers inherit (so it is set before anything
    there touches CUDA): CUDA_VISIBLE_DEVICES=N, and the pool children's metrics ports moved
    up by N × concurrency, so the workers of one host never take each other's ports."""
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    if settings.worker_metrics_port > 0:
        port = settings.worker_metrics_port + gpu * concurrency
        os.environ["BARGE_WORKER_METRICS_PORT"] = str(port)


def cmd_worker(args: argparse.Namespace) -> int:
    gpu = args.gpu
    try:
        argvs = worker_argvs(
            args.queues, args.concurrency, args.control_concurrency, args.hostname, gpu
        )
    except ValueError as exc:
        print(f"barge worker: {exc}", file=sys.stderr)
        return 2
    problem = worker_problem(get_settings(), argvs, args.hostname is not None or gpu is not None)
    if problem:
        print(f"barge worker: {problem}", file=sys.stderr)
        return 2
    if gpu is not None:
        pin_to_gpu(get_settings(), gpu, args.concurrency)
    if len(argvs) == 1:
        (argv,) = argvs.values()
        os.execv(argv[0], argv)
    return supervise(argvs)


def _exit_with_parent() -> Callable[[], None] | None:
    """For a child's ``preexec_fn`` (Linux): it gets SIGTERM, a warm shutdown, should the
    supervisor die before it."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # loaded here: the child only calls it
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def supervise(argvs: dict[str, list[str]]) -> int:
    """Run each argv as a child process in this process group (so a signal to the group, a
    Ctrl-C or a `kill -- -PGID`, reaches them all) until they have all exited.

    SIGTERM and SIGINT ask every child for a warm shutdown (running tasks finish); SIGQUIT for
    a cold one. When a child exits on its own, the others are stopped warmly and this returns
    its status (non-zero), so a service manager restarts the worker whole."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    requested = False

    def stop_all(signum: int = signal.SIGTERM) -> None:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signum)

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal requested
        requested = True
        stop_all(signal.SIGQUIT if signum == signal.SIGQUIT else signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, on_signal)
    hook = _exit_with_parent()
    for name, argv in argvs.items():
        procs[name] = subprocess.Popen(argv, preexec_fn=hook)
    if requested:  # a signal came while they were starting: the later ones missed it
        stop_all()
    status: int | None = None
    while any(p.poll() is None for p in procs.values()):
        ended = [(name, p.returncode) for name, p in procs.items() if p.returncode is not None]
        if ended and status is None and not requested:
            name, code = ended[0]
            print(f"barge worker: the {name} worker exited ({code}); stopping", file=sys.stderr)
            status = code or 1
            stop_all()
        time.sleep(0.2)
    if status is None:
        codes = [p.returncode for p in procs.values() if p.returncode]
        status = codes[0] if codes else (0 if requested else 1)
    return status


def cmd_scheduler(_: argparse.Namespace) -> int:
    argv = scheduler_argv()
    os.execv(argv[0], argv)


def cmd_flower(args: argparse.Namespace) -> int:
    try:
        auth = flower_basic_auth(get_settings())
    except ValueError as exc:
        print(f"barge flower: {exc}", file=sys.stderr)
        return 2
    argv = flower_argv(args.address, args.port, args.purge_offline_workers)
    # The credentials go in the environment, not argv: `ps` shows every command line.
    os.execve(argv[0], argv, {**os.environ, "FLOWER_BASIC_AUTH": auth})


@dataclass
class Child:
    """A process of the stack: its name, its process, its log file (from ``log_start`` on, this
    run's part) and, for a Celery worker, its node name (it logs ``<node> ready.``)."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    log_start: int = 0
    node: str | None = None

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "(no log)"
        return "\n".join(f"    {line}" for line in text)

    def exit_report(self) -> str:
        return (
            f"the {self.name} process exited (code {self.proc.returncode}); the end of its log "
            f"({self.log}):\n{self.tail()}"
        )

    def ready(self) -> bool:
        """Whether it is ready: a Celery worker once it logged so (it consumes its queues)."""
        if self.node is None:
            return True
        try:
            with self.log.open("rb") as f:
                f.seek(self.log_start)
                return f"{self.node} ready.".encode() in f.read()
        except OSError:
            return False


def start_stack(host: str, port: int, log_dir: Path) -> list[Child]:
    """The stack: api + GPU worker + control worker + scheduler as child processes, on the
    configured stores (the embedded ones by default). The workers are named after this
    process (``gpu-<pid>@host``), so they start beside any other worker of the host. Each child
    gets SIGTERM should this process die first (Linux), so none outlives it."""
    log_dir.mkdir(parents=True, exist_ok=True)
    hook = _exit_with_parent()
    children = []
    for name, argv in (
        ("api", api_argv(host, port)),
        ("worker", worker_argv(GPU_QUEUE)),
        ("control", worker_argv(CONTROL_QUEUE, CONTROL_CONCURRENCY)),
        ("scheduler", scheduler_argv()),
    ):
        log = log_dir / f"{name}.log"
        with log.open("ab") as out:
            start = out.tell()
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, preexec_fn=hook)
        children.append(Child(name, proc, log, start, node_name(argv)))
    return children


def stop_stack(children: list[Child]) -> None:
    for c in children:
        if c.proc.poll() is None:
            c.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for c in children:
        try:
            c.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait(5)


def wait_healthy(client: Client, children: list[Child], timeout: float = 60) -> None:
    """Until the API is healthy and every worker is ready; SystemExit (with the end of its
    log) as soon as a child exits, or when ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    last: Any = None
    waiting: list[str] = []
    while time.monotonic() < deadline:
        for c in children:
            if c.proc.poll() is not None:
                raise SystemExit(f"barge: {c.exit_report()}")
        try:
            last = client.health()
        except ApiError as exc:
            last = str(exc)
        waiting = [c.name for c in children if not c.ready()]
        if isinstance(last, dict) and last.get("status") == "ok" and not waiting:
            return
        time.sleep(0.5)
    raise SystemExit(
        f"barge: the stack was not ready within {timeout:.0f}s: API health {last}; "
        f"workers not ready: {', '.join(waiting) or 'none'}"
    )


def broker_name(url: str) -> str:
    """The broker ``url`` names, without its credentials: ``host:port/vhost``."""
    parts = urlsplit(url)
    if not parts.hostname:
        return url
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.hostname}{port}{parts.path or '/'}"


def stores(settings: Settings) -> str:
    """Where the stack keeps its state: the configured stores, or the embedded ones."""
    store = (
        f"S3 at {settings.s3_endpoint_url or 'AWS'}"
        if settings.storage_backend == "s3"
        else f"local objects in {settings.resolved_local_store_dir}"
    )
    broker = (
        f"a local broker in {settings.broker_folder}"
        if settings.is_filesystem_broker
        else f"broker {broker_name(settings.resolved_broker_url)}"
    )
    return f"database {database_name(settings.resolved_database_url)}, {broker}, {store}"


class Terminated(Exception):
    """SIGTERM (or SIGHUP) arrived: stop the stack as on Ctrl-C."""


def _terminate(signum: int, _frame: Any) -> None:
    raise Terminated(signal.Signals(signum).name)


def cmd_up(args: argparse.Namespace) -> int:
    settings = get_settings()
    host, port = _host_port(args)
    problem = port_taken(host, port)
    if problem:
        print(f"barge up: {problem}", file=sys.stderr)
        return 2
    # systemd, supervisors and `timeout` send SIGTERM: the stack stops as on Ctrl-C.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)
    children: list[Child] = []
    try:
        db_upgrade()
        log_dir = settings.home.resolve() / "logs"
        children = start_stack(host, port, log_dir)
        url = f"http://{host}:{port}"
        wait_healthy(Client(url, ""), children)
        print(f"Barge is up: API {url} (docs {url}/docs), logs in {log_dir}", file=sys.stderr)
        print(f"on {stores(settings)}", file=sys.stderr)
        print("create a key with `barge keys create --tenant NAME`; Ctrl-C stops", file=sys.stderr)
        while True:
            ended = next((c for c in children if c.proc.poll() is not None), None)
            if ended is not None:
                print(f"barge up: {ended.exit_report()}\nstopping the rest", file=sys.stderr)
                return 1
            time.sleep(0.5)
    except (KeyboardInterrupt, Terminated):
        return 0
    finally:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # stopping: a second signal must not cut it
        stop_stack(children)
