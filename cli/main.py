"""The ``barge`` command's entry point (``barge = "cli.main:main"``, ``python -m cli``): the
argument parser and the dispatch to a command.

The command modules are imported only when one of their commands runs: the client commands
(``cli.commands``) then start without loading the database layer, which ``admin``, ``up`` and
the demo need. Imports: the other ``cli`` modules (``cli.client`` and ``cli.errors`` for their errors),
pydantic.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

from pydantic import ValidationError

from barge.specs import TASKS
from cli.client import ApiError
from cli.errors import CliError

DESCRIPTION = "The ``barge`` command: run the servers, manage keys, submit and watch jobs."

Handler = Callable[[argparse.Namespace], int]
Subparsers = argparse._SubParsersAction  # type: ignore[type-arg]


def command(module: str, name: str) -> Handler:
    """``cli.<module>.<name>``, imported when the command runs."""

    def run(args: argparse.Namespace) -> int:
        handler: Handler = getattr(importlib.import_module(f"cli.{module}"), name)
        return handler(args)

    return run


def _add_processes(sub: Subparsers) -> None:
    for name, func, help_ in (
        ("up", "cmd_up", "run the embedded stack (api + worker + scheduler)"),
        ("api", "cmd_api", "run the HTTP API"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--host", default=None, help="default BARGE_API_HOST (127.0.0.1)")
        p.add_argument("--port", type=int, default=None, help="default BARGE_API_PORT (8000)")
        p.set_defaults(func=command("processes", func))

    p = sub.add_parser(
        "worker",
        help="run a worker (one per GPU: --gpu N): a GPU worker and a control worker of its own, "
        "so planning and finalizing never wait behind a shard",
    )
    p.add_argument(
        "--queues",
        default="gpu,control",
        help="gpu, control, or both (default): one Celery worker process for each",
    )
    p.add_argument("--concurrency", type=int, default=1, help="GPU worker pool processes (1)")
    p.add_argument(
        "--control-concurrency", type=int, default=2, help="control worker pool processes (2)"
    )
    p.add_argument(
        "--gpu",
        type=int,
        default=None,
        metavar="INDEX",
        help="the GPU this worker runs on (sets CUDA_VISIBLE_DEVICES=INDEX); run one per GPU",
    )
    p.add_argument(
        "--hostname",
        default=None,
        help="node name (default gpu-INDEX@%%h / control-INDEX@%%h with --gpu, else "
        "gpu-PID@%%h / control-PID@%%h: unique on the host)",
    )
    p.set_defaults(func=command("processes", "cmd_worker"))

    p = sub.add_parser("scheduler", help="run the scheduler (Celery beat: reconciler)")
    p.set_defaults(func=command("processes", "cmd_scheduler"))

    p = sub.add_parser(
        "flower",
        help="run Flower, the Celery monitoring UI, behind basic auth (BARGE_FLOWER_PASSWORD)",
    )
    p.add_argument("--address", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5555, help="listen port (default 5555)")
    p.add_argument(
        "--purge-offline-workers",
        type=int,
        default=600,
        metavar="SECONDS",
        help="drop a worker from the dashboard this long after it went offline (default 600)",
    )
    p.set_defaults(func=command("processes", "cmd_flower"))


def _add_admin(sub: Subparsers) -> None:
    db = sub.add_parser("db", help="database administration").add_subparsers(
        dest="db", required=True
    )
    p = db.add_parser("upgrade", help="apply all migrations")
    p.set_defaults(func=command("admin", "cmd_db_upgrade"))

    keys = sub.add_parser("keys", help="API keys (on the database)").add_subparsers(
        dest="keys", required=True
    )
    p = keys.add_parser("create", help="create a key; prints only the key")
    p.add_argument("--tenant", required=True, help="its tenant (created if new)")
    p.add_argument("--role", choices=["member", "admin"], default="member")
    p.add_argument("--name", default=None, help="a label, e.g. ci or alice")
    p.add_argument("--expires-in", default=None, metavar="DURATION", help="e.g. 30d, 12h")
    p.set_defaults(func=command("admin", "cmd_keys_create"))
    p = keys.add_parser("list", help="keys with their state and times (never the key)")
    p.add_argument("--tenant", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=command("admin", "cmd_keys_list"))
    p = keys.add_parser("revoke", help="revoke a key: refused from the next request on")
    p.add_argument("key", metavar="PREFIX_OR_ID")
    p.set_defaults(func=command("admin", "cmd_keys_revoke"))
    p = keys.add_parser("rotate", help="a new key like the old one; prints only the new key")
    p.add_argument("key", metavar="PREFIX_OR_ID")
    p.add_argument(
        "--grace", default=None, metavar="DURATION", help="the old key works this long (1h)"
    )
    p.add_argument(
        "--expires-in", default=None, metavar="DURATION", help="default: the old key's lifetime"
    )
    p.set_defaults(func=command("admin", "cmd_keys_rotate"))

    tenants = sub.add_parser("tenants", help="tenants, scopes, quotas (on the database)")
    tsub = tenants.add_subparsers(dest="tenants", required=True)
    for name, help_ in (
        ("create", "create a tenant"),
        ("update", "change a tenant's scopes or quota overrides"),
    ):
        p = tsub.add_parser(name, help=help_)
        p.add_argument("name")
        for flag, kind in (("--read", "read"), ("--write", "write")):
            p.add_argument(
                flag,
                nargs="+",
                action="extend",
                default=None,
                metavar="S3PREFIX",
                help=f"prefixes it may {kind} (s3://bucket/path/, or *); default: the template",
            )
        if name == "update":
            p.add_argument(
                "--reset-scopes", action="store_true", help="back to the settings' templates"
            )
        p.add_argument(
            "--quota",
            action="append",
            default=None,
            metavar="KEY=VALUE",
            help="override a quota (KEY= goes back to the default); repeat for more",
        )
        p.set_defaults(func=command("admin", f"cmd_tenants_{name}"))
    p = tsub.add_parser("show", help="effective scopes and quotas, and which are defaults")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=command("admin", "cmd_tenants_show"))
    p = tsub.add_parser("list", help="every tenant")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=command("admin", "cmd_tenants_list"))

    p = sub.add_parser("audit", help="the audit log, newest first (on the database)")
    p.add_argument("--tenant", default=None)
    p.add_argument("--action", default=None, help="e.g. key.revoke, or key. for all key actions")
    p.add_argument("--key", default=None, metavar="PREFIX", help="entries made with this key")
    p.add_argument("--since", default=None, help="an ISO 8601 time or a duration ago (1h)")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=command("admin", "cmd_audit"))


def _add_jobs(sub: Subparsers) -> None:
    p = sub.add_parser("submit", help="submit a job spec (JSON or YAML file, - for stdin)")
    p.add_argument("spec")
    p.add_argument("--wait", action="store_true", help="show progress until the job ends")
    p.add_argument("--idempotency-key", default=None)
    p.set_defaults(func=command("commands", "cmd_submit"))

    for name, func, help_ in (
        ("status", "cmd_status", "a job's status and progress"),
        ("cancel", "cmd_cancel", "cancel a job"),
        ("wait", "cmd_wait", "show live progress until the job ends"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("id", help="a job id, or a unique prefix of one (as list and top show)")
        if name == "status":
            p.add_argument("--json", action="store_true")
        p.set_defaults(func=command("commands", func))

    p = sub.add_parser("shards", help="each shard's status, attempts, worker and last error")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=command("commands", "cmd_shards"))

    p = sub.add_parser("events", help="a job's events")
    p.add_argument("id")
    p.add_argument("--follow", "-f", action="store_true")
    p.add_argument("--json", action="store_true", help="one JSON object per event per line")
    p.set_defaults(func=command("commands", "cmd_events"))


def _add_drops_and_models(sub: Subparsers) -> None:
    drops_cmd = command("commands", "cmd_drops")
    drops = sub.add_parser("drops", help="S3 drop folders").add_subparsers(
        dest="drops", required=True
    )
    p = drops.add_parser("add", help="watch PREFIX/incoming/: each new file becomes a job")
    p.add_argument("name")
    p.add_argument("--prefix", required=True, help="s3://bucket/path/")
    p.add_argument("--template", required=True, help="job spec without input/output (JSON/YAML)")
    p.set_defaults(func=drops_cmd)
    p = drops.add_parser("list", help="the drop folders")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=drops_cmd)
    p = drops.add_parser("remove", help="stop watching a drop folder")
    p.add_argument("name")
    p.set_defaults(func=drops_cmd)

    models_cmd = command("commands", "cmd_models")
    models = sub.add_parser("models", help="the model registry")
    models.set_defaults(func=models_cmd, models="list", json=False)
    msub = models.add_subparsers(dest="models")
    p = msub.add_parser("list", help="the newest version of each model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=models_cmd)
    p = msub.add_parser(
        "show", help="every version of a model: its URI, base model, fine-tune job and metrics"
    )
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=models_cmd)
    p = msub.add_parser("register", help="register a model directory as the next version")
    p.add_argument("name")
    p.add_argument(
        "--uri",
        required=True,
        help="s3://bucket/path/ of a Hugging Face model directory, or of an ONNX one (model.onnx + barge.json)",
    )
    p.add_argument("--task", required=True, choices=list(TASKS))
    p.set_defaults(func=models_cmd)


def _add_views(sub: Subparsers) -> None:
    p = sub.add_parser("list", help="list jobs, newest first")
    p.add_argument("--status")
    p.add_argument("--type")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--cursor")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=command("commands", "cmd_list"))

    p = sub.add_parser("top", help="a live table of running, cancelling and queued jobs")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    p.add_argument("--once", action="store_true", help="print the table once and exit")
    p.add_argument("--json", action="store_true", help="the active jobs once, as JSON")
    p.set_defaults(func=command("commands", "cmd_top"))

    p = sub.add_parser("demo", help="run a real embedding job on the embedded stack")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--records", type=int, default=2000)
    p.set_defaults(func=command("demo", "cmd_demo"))


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("barge")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="barge", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"barge {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    # In this order: it is the order of `barge --help`.
    _add_processes(sub)
    _add_admin(sub)
    _add_jobs(sub)
    _add_drops_and_models(sub)
    _add_views(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # here, so a reader that went away is seen below
        return status
    except (ApiError, CliError) as exc:
        print(f"barge: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"barge: invalid BARGE_ settings:\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Whoever read the output stopped (`barge list | head -1`): not an error of ours.
        # stdout is pointed at /dev/null so the interpreter's final flush does not fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
