"""Process supervision: ``barge api|worker|scheduler|flower`` and ``barge up``.

Each server command builds the process's argv and execs it, by module name (``api.app``,
``worker.celery_app``), so this module never imports the API or the worker. ``worker`` runs one
Celery worker per kind of work, so that control work never waits behind a shard: ``gpu``
(prefork, one child per GPU) and ``control`` (planning, finalizing, reconciling, drop scans;
never loads a model); with both it supervises the two as child processes. ``up`` runs the
embedded stack (api + both workers + scheduler) as child processes and stops them together.

Imports: ``cli.admin`` (``up`` brings the schema up first), ``cli.client`` and the kernel.
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

from barge import logs
from barge.queue import CONTROL_QUEUE, GPU_QUEUE
from barge.settings import Settings, get_settings
from cli.admin import db_upgrade
from cli.client import ApiError, Client


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


def worker_argv(
    queue: str = GPU_QUEUE, concurrency: int = 1, hostname: str | None = None
) -> list[str]:
    """One Celery worker (prefork) consuming one queue, named ``<queue>@<host>`` by default."""
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
        hostname or f"{queue}@%h",
        "--without-gossip",
        "--without-mingle",
    )


def worker_argvs(
    queues: str = "gpu,control",
    concurrency: int = 1,
    control_concurrency: int = CONTROL_CONCURRENCY,
    hostname: str | None = None,
) -> dict[str, list[str]]:
    """One Celery worker per kind of work in ``queues``, by queue. With both kinds, a given
    ``--hostname name@host`` becomes ``name-gpu@host`` and ``name-control@host``."""
    kinds = worker_queues(queues)
    argvs = {}
    for queue in kinds:
        name = hostname
        if hostname and len(kinds) > 1:
            node, at, host = hostname.partition("@")
            name = f"{node}-{queue}{at}{host}"
        n = concurrency if queue == GPU_QUEUE else control_concurrency
        argvs[queue] = worker_argv(queue, n, name)
    return argvs


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


def cmd_worker(args: argparse.Namespace) -> int:
    try:
        argvs = worker_argvs(args.queues, args.concurrency, args.control_concurrency, args.hostname)
    except ValueError as exc:
        print(f"barge worker: {exc}", file=sys.stderr)
        return 2
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
    """A process of the embedded stack: its name, its process and its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

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


def start_stack(host: str, port: int, log_dir: Path) -> list[Child]:
    """The embedded stack: api + GPU worker + control worker + scheduler as child processes.
    Each gets SIGTERM should this process die first (Linux), so none outlives it."""
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
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, preexec_fn=hook)
        children.append(Child(name, proc, log))
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
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        for c in children:
            if c.proc.poll() is not None:
                raise SystemExit(f"barge: {c.exit_report()}")
        try:
            last = client.health()
            if last.get("status") == "ok":
                return
        except ApiError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise SystemExit(f"barge: the API did not become healthy within {timeout:.0f}s: {last}")


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
