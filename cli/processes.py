"""Process supervision: ``barge api|worker|scheduler|flower`` and ``barge up``.

Each server command builds the process's argv and execs it, by module name (``api.app``,
``worker.celery_app``), so this module never imports the API or the worker. ``up`` runs the
embedded stack (api + worker + scheduler) as child processes and stops them together.

Imports: ``cli.admin`` (``up`` brings the schema up first), ``cli.client`` and the kernel.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from barge.settings import Settings, get_settings
from cli.admin import db_upgrade
from cli.client import ApiError, Client


def _celery_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", *args]


def worker_argv(
    queues: str = "gpu,control", concurrency: int = 1, hostname: str | None = None
) -> list[str]:
    argv = _celery_argv(
        "worker",
        "--loglevel",
        "INFO",
        "--pool",
        "prefork",
        "--concurrency",
        str(concurrency),
        "-Q",
        queues,
        "--without-gossip",
        "--without-mingle",
    )
    if hostname:
        argv += ["--hostname", hostname]
    return argv


def scheduler_argv() -> list[str]:
    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    schedule = (settings.home / "celerybeat-schedule").resolve()
    return _celery_argv("beat", "--loglevel", "INFO", "--schedule", str(schedule))


def flower_argv(address: str, port: int, purge_offline_workers: int) -> list[str]:
    # Not persistent: jobs live in Postgres, and Flower's state file would need a writable cwd.
    return _celery_argv(
        "flower",
        f"--address={address}",
        f"--port={port}",
        f"--purge_offline_workers={purge_offline_workers}",
        "--persistent=False",
    )


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
        "--log-level",
        "warning",
    ]


def _host_port(args: argparse.Namespace) -> tuple[str, int]:
    settings = get_settings()
    return args.host or settings.api_host, args.port or settings.api_port


def cmd_api(args: argparse.Namespace) -> int:
    os.execv(sys.executable, api_argv(*_host_port(args)))


def cmd_worker(args: argparse.Namespace) -> int:
    argv = worker_argv(args.queues, args.concurrency, args.hostname)
    os.execv(argv[0], argv)


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


def start_stack(host: str, port: int, log_dir: Path) -> list[subprocess.Popen[bytes]]:
    """The embedded stack: api + worker + scheduler as child processes."""
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for name, argv in (
        ("api", api_argv(host, port)),
        ("worker", worker_argv()),
        ("scheduler", scheduler_argv()),
    ):
        log = (log_dir / f"{name}.log").open("ab")
        procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
    return procs


def stop_stack(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


def wait_healthy(client: Client, procs: list[subprocess.Popen[bytes]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(f"a Barge process exited early (code {p.returncode}); see its log")
        try:
            last = client.health()
            if last.get("status") == "ok":
                return
        except ApiError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise SystemExit(f"the API did not become healthy within {timeout:.0f}s: {last}")


def cmd_up(args: argparse.Namespace) -> int:
    settings = get_settings()
    db_upgrade()
    log_dir = settings.home.resolve() / "logs"
    host, port = _host_port(args)
    procs = start_stack(host, port, log_dir)
    url = f"http://{host}:{port}"
    try:
        wait_healthy(Client(url, ""), procs)
        print(f"Barge is up: API {url} (docs {url}/docs), logs in {log_dir}", file=sys.stderr)
        print("create a key with `barge keys create --tenant NAME`; Ctrl-C stops", file=sys.stderr)
        while all(p.poll() is None for p in procs):
            time.sleep(1)
        print("a Barge process exited; stopping the rest", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_stack(procs)
