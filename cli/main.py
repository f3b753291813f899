"""The ``barge`` command's entry point (``barge = "cli.main:main"``, ``python -m cli``): the
argument parser and the dispatch to a command.

The command modules are imported only when one of their commands runs: the client commands
(``cli.commands``) then start without loading the database layer, which ``admin``, ``up`` and
the demo need. Every error a command raises is printed as ``barge: <message>`` and mapped to
its exit status in one place (``cli.errors.exit_code``). Every command's help ends with examples
(``EXAMPLES``); ``walk`` visits every command of the parser (the help tests and the reference
docs use it).

Imports: the other ``cli`` modules (``cli.errors``, ``cli.output``, ``cli.client`` for its
errors), pydantic, the kernel (``barge.specs``, ``barge.status``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Iterator

from pydantic import ValidationError

from barge.specs import JOB_TYPES, TASKS
from barge.status import JOB_STATUSES
from cli.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_CODES,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    ApiError,
    CliError,
    exit_code,
)
from cli.output import add_output_options

DESCRIPTION = """\
barge: run the Barge servers, manage keys and tenants, and submit, watch and read bulk
inference and fine-tune jobs.

The client commands (submit, status, list, results, ...) talk to the API at BARGE_API_URL
with the key in BARGE_API_KEY, or with a profile saved by "barge login"."""

EPILOG = """\
environment:
  BARGE_API_URL    the API's URL (default http://127.0.0.1:8000)
  BARGE_API_KEY    the API key (an admin makes one: barge keys create --tenant NAME)
  BARGE_PROFILE    the saved profile to use (default: the one "barge config use" chose)
  XDG_CONFIG_HOME  the profiles are in $XDG_CONFIG_HOME/barge/config.toml
                   (~/.config/barge/config.toml when unset), mode 0600
  What a command uses: its flags (--api-url, --profile) first, then these variables,
  then the profile, then the defaults. The servers read their own BARGE_ settings.

exit status:
{codes}

examples:
  barge up                                    # the embedded stack, no servers needed
  barge login --api-url https://barge.example.com
  barge submit job.yaml --wait
  barge list --status running -o wide
  barge results 3f2a9c1e --dir out/
  barge <command> --help                      # each command's options and examples"""

# Examples for each command's help, by its path (tests/unit/test_cli_parser.py checks every
# command has some).
EXAMPLES: dict[str, tuple[str, ...]] = {
    "up": ("barge up", "barge up --port 8080"),
    "api": ("barge api --host 0.0.0.0 --port 8000",),
    "worker": (
        "CUDA_VISIBLE_DEVICES=0 barge worker",
        "barge worker --queues control --control-concurrency 4",
    ),
    "scheduler": ("barge scheduler",),
    "flower": ("BARGE_FLOWER_PASSWORD=... barge flower --port 5555",),
    "db": ("barge db upgrade",),
    "db upgrade": ("barge db upgrade",),
    "keys": ("barge keys create --tenant acme", "barge keys list -o json"),
    "keys create": (
        "barge keys create --tenant acme --name ci --expires-in 30d",
        "barge keys create --tenant ops --role admin",
    ),
    "keys list": ("barge keys list --tenant acme", "barge keys list -q"),
    "keys revoke": ("barge keys revoke bk_3f2a9c1",),
    "keys rotate": ("barge keys rotate bk_3f2a9c1 --grace 2h",),
    "tenants": ("barge tenants show acme",),
    "tenants create": ("barge tenants create acme --read s3://data/acme/ --write s3://out/acme/",),
    "tenants update": (
        "barge tenants update acme --quota max_active_jobs=20",
        "barge tenants update acme --reset-scopes",
    ),
    "tenants show": ("barge tenants show acme -o yaml",),
    "tenants list": ("barge tenants list", "barge tenants list -q"),
    "audit": ("barge audit --tenant acme --since 1h", "barge audit --action key. -o json"),
    "login": (
        "barge login --api-url https://barge.example.com        # asks for the key",
        "barge login --profile staging --api-url https://staging.example.com < key.txt",
    ),
    "logout": ("barge logout --profile staging",),
    "config": ("barge config list", "barge config use staging"),
    "config list": ("barge config list", "barge config list -o json"),
    "config use": ("barge config use staging",),
    "submit": (
        "barge submit job.yaml --wait",
        "cat job.json | barge submit - --idempotency-key nightly-2024-06-01",
        "barge submit job.yaml --dry-run",
    ),
    "status": ("barge status 3f2a9c1e", "barge status 3f2a9c1e -o yaml"),
    "cancel": ("barge cancel 3f2a9c1e",),
    "retry": ("barge retry 3f2a9c1e --wait", "barge retry 3f2a9c1e --batch-size 8"),
    "pause": ("barge pause 3f2a9c1e",),
    "resume": ("barge resume 3f2a9c1e",),
    "wait": ("barge wait 3f2a9c1e && echo done",),
    "shards": ("barge shards 3f2a9c1e", "barge shards 3f2a9c1e -o wide"),
    "events": ("barge events 3f2a9c1e --follow", "barge events 3f2a9c1e -o json | jq .kind"),
    "results": (
        "barge results 3f2a9c1e --dir out/",
        "barge results 3f2a9c1e --stdout | jq -c '{id, label}'",
    ),
    "errors": ("barge errors 3f2a9c1e | jq .error", "barge errors 3f2a9c1e -q --limit 20"),
    "drops": ("barge drops list",),
    "drops add": (
        "barge drops add reviews --prefix s3://barge/acme/drops/reviews/ --template embed.yaml",
    ),
    "drops list": ("barge drops list -o wide",),
    "drops remove": ("barge drops remove reviews",),
    "webhooks": ("barge webhooks list",),
    "webhooks create": (
        "barge webhooks create https://hooks.example.com/barge --event job.succeeded "
        "--event job.failed",
    ),
    "webhooks list": ("barge webhooks list -o json",),
    "webhooks delete": ("barge webhooks delete whep_3f2a9c1e...",),
    "webhooks rotate": ("barge webhooks rotate whep_3f2a9c1e...",),
    "webhooks deliveries": ("barge webhooks deliveries whep_3f2a9c1e... -o wide",),
    "models": ("barge models", "barge models show ticket-router"),
    "models list": ("barge models list -o name",),
    "models show": ("barge models show ticket-router -o json",),
    "models register": (
        "barge models register minilm --uri s3://barge/acme/models/minilm/ --task embed",
    ),
    "list": (
        "barge list",
        "barge list --status failed --type finetune -o wide",
        "barge list -q | xargs -n1 barge status",
    ),
    "top": ("barge top", "barge top --once"),
    "demo": ("barge demo --records 500",),
}

Handler = Callable[[argparse.Namespace], int]
Subparsers = argparse._SubParsersAction  # type: ignore[type-arg]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written (their lines and indents kept)."""


def command(module: str, name: str) -> Handler:
    """``cli.<module>.<name>``, imported when the command runs."""

    def run(args: argparse.Namespace) -> int:
        handler: Handler = getattr(importlib.import_module(f"cli.{module}"), name)
        return handler(args)

    return run


def add_connection_options(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """``--profile`` and ``--api-url`` of a client command. On a subcommand they default to
    nothing at all, so that the same options given before the command (``barge --profile x
    list``) are kept."""
    group = parser.add_argument_group("connection")
    default = None if top else argparse.SUPPRESS
    group.add_argument(
        "--profile",
        default=default,
        metavar="NAME",
        help="the saved profile to use (default: BARGE_PROFILE, else the default profile; "
        "see barge login)",
    )
    group.add_argument(
        "--api-url",
        default=default,
        metavar="URL",
        help="the API's URL (default: BARGE_API_URL, else the profile's, else "
        "http://127.0.0.1:8000)",
    )


def _client(sub: Subparsers, name: str, help_: str) -> argparse.ArgumentParser:
    """A client command: one that talks to the API."""
    p = sub.add_parser(name, help=help_)
    add_connection_options(p)
    return p


def _job_id(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", help="a job id, or a unique prefix of one (as list and top show)")


def _add_processes(sub: Subparsers) -> None:
    for name, func, help_ in (
        (
            "up",
            "cmd_up",
            "run the whole stack in one command (api + workers + scheduler): embedded with nothing configured, else on the configured services",
        ),
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
    p.add_argument("--role", choices=["member", "admin"], default="member", help="default member")
    p.add_argument("--name", default=None, help="a label, e.g. ci or alice")
    p.add_argument(
        "--expires-in", default=None, metavar="DURATION", help="e.g. 30d, 12h (default: never)"
    )
    p.set_defaults(func=command("admin", "cmd_keys_create"))
    p = keys.add_parser("list", help="keys with their state and times (never the key)")
    p.add_argument("--tenant", default=None, help="only this tenant's keys")
    add_output_options(p, "key prefixes")
    p.set_defaults(func=command("admin", "cmd_keys_list"))
    p = keys.add_parser("revoke", help="revoke a key: refused from the next request on")
    p.add_argument("key", metavar="PREFIX_OR_ID", help="the key's prefix (bk_...) or id")
    p.set_defaults(func=command("admin", "cmd_keys_revoke"))
    p = keys.add_parser("rotate", help="a new key like the old one; prints only the new key")
    p.add_argument("key", metavar="PREFIX_OR_ID", help="the key's prefix (bk_...) or id")
    p.add_argument(
        "--grace", default=None, metavar="DURATION", help="the old key works this long (1h)"
    )
    p.add_argument(
        "--expires-in", default=None, metavar="DURATION", help="default: the old key's lifetime"
    )
    p.set_defaults(func=command("admin", "cmd_keys_rotate"))
    _add_tenants(sub)

    p = sub.add_parser("audit", help="the audit log, newest first (on the database)")
    p.add_argument("--tenant", default=None, help="only this tenant's entries")
    p.add_argument("--action", default=None, help="e.g. key.revoke, or key. for all key actions")
    p.add_argument("--key", default=None, metavar="PREFIX", help="entries made with this key")
    p.add_argument("--since", default=None, help="an ISO 8601 time or a duration ago (1h)")
    p.add_argument("--limit", type=int, default=50, help="at most this many entries (50)")
    add_output_options(p, "entry ids")
    p.set_defaults(func=command("admin", "cmd_audit"))


def _add_tenants(sub: Subparsers) -> None:
    tenants = sub.add_parser("tenants", help="tenants, scopes, quotas (on the database)")
    tsub = tenants.add_subparsers(dest="tenants", required=True)
    for name, help_ in (
        ("create", "create a tenant"),
        ("update", "change a tenant's scopes or quota overrides"),
    ):
        p = tsub.add_parser(name, help=help_)
        p.add_argument("name", help="the tenant's name")
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
    p.add_argument("name", help="the tenant's name")
    add_output_options(p, "tenant names")
    p.set_defaults(func=command("admin", "cmd_tenants_show"))
    p = tsub.add_parser("list", help="every tenant")
    add_output_options(p, "tenant names")
    p.set_defaults(func=command("admin", "cmd_tenants_list"))


def _add_profiles(sub: Subparsers) -> None:
    p = _client(sub, "login", "save an API URL and key as a profile (asks the API first)")
    p.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help="the key itself; it then lands in your shell history and the process list, so "
        "prefer the prompt (a terminal) or stdin (a pipe), which login reads without this",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="save without asking the API whether it takes the key",
    )
    p.set_defaults(func=command("login", "cmd_login"))
    p = sub.add_parser("logout", help="remove a saved profile and its key")
    p.add_argument(
        "--profile",
        default=argparse.SUPPRESS,
        metavar="NAME",
        help="the profile to remove (default: BARGE_PROFILE, else the default profile)",
    )
    p.set_defaults(func=command("login", "cmd_logout"))

    config = sub.add_parser("config", help="the saved profiles").add_subparsers(
        dest="config", required=True
    )
    p = config.add_parser("list", help="the saved profiles (a key shows only its prefix)")
    add_output_options(p, "profile names")
    p.set_defaults(func=command("login", "cmd_config_list"))
    p = config.add_parser("use", help="make a profile the default")
    p.add_argument("name", help="a saved profile")
    p.set_defaults(func=command("login", "cmd_config_use"))


def _add_jobs(sub: Subparsers) -> None:
    p = _client(sub, "submit", "submit a job spec (JSON or YAML file, - for stdin)")
    p.add_argument("spec", help="a .json, .yaml or .yml file, or - to read JSON from stdin")
    p.add_argument("--wait", action="store_true", help="show progress until the job ends")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check the spec and estimate records, tokens, shards, duration; create nothing",
    )
    p.add_argument(
        "--idempotency-key",
        default=None,
        metavar="KEY",
        help="submitting again with the same key returns the same job",
    )
    p.set_defaults(func=command("commands", "cmd_submit"))

    p = _client(sub, "status", "a job's status and progress")
    _job_id(p)
    add_output_options(p)
    p.set_defaults(func=command("commands", "cmd_status"))
    for name, func, help_ in (
        ("cancel", "cmd_cancel", "cancel a job"),
        ("pause", "cmd_pause", "pause a running job: running shards finish, no new one starts"),
        ("resume", "cmd_resume", "resume a pausing or paused job"),
        ("wait", "cmd_wait", "show live progress until the job ends (exit 1 unless it succeeded)"),
    ):
        p = _client(sub, name, help_)
        _job_id(p)
        p.set_defaults(func=command("commands", func))

    p = _client(sub, "retry", "a new job over only the records a finished job did not finish")
    _job_id(p)
    p.add_argument("--batch-size", type=int, default=None, metavar="N", help="another batch size")
    p.add_argument("--shard-size", type=int, default=None, metavar="N", help="another shard size")
    p.add_argument("--model", default=None, help="another model (or version) to run them with")
    p.add_argument("--wait", action="store_true", help="show progress until the retry ends")
    p.set_defaults(func=command("commands", "cmd_retry"))

    p = _client(sub, "shards", "each shard's status, attempts, records, failures and worker")
    _job_id(p)
    add_output_options(p, "shard numbers")
    p.set_defaults(func=command("commands", "cmd_shards"))

    p = _client(sub, "events", "a job's events")
    _job_id(p)
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    add_output_options(p, "event ids")
    p.set_defaults(func=command("commands", "cmd_events"))
    _add_outputs(sub)


def _add_outputs(sub: Subparsers) -> None:
    p = _client(sub, "results", "download a job's outputs, or stream its results to stdout")
    _job_id(p)
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--dir",
        "-d",
        default=None,
        metavar="DIR",
        help="where to write the files (default: ./JOB-ID/); parts, errors/ and _manifest.json",
    )
    where.add_argument(
        "--stdout",
        action="store_true",
        help="write the result parts to stdout, in input order (JSON Lines outputs only)",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="download every file of the output prefix (a fine-tune's model and checkpoints too)",
    )
    p.set_defaults(func=command("results", "cmd_results"))

    p = _client(sub, "errors", "a job's failed records, as JSON Lines (id, source, line, error)")
    _job_id(p)
    p.add_argument(
        "-q",
        "--ids",
        dest="ids_only",
        action="store_true",
        help="only the failed records' ids (- for a record that has none)",
    )
    p.add_argument("--limit", type=int, default=None, metavar="N", help="at most N lines")
    p.set_defaults(func=command("results", "cmd_errors"))


def _add_webhooks(sub: Subparsers) -> None:
    hooks_cmd = command("commands", "cmd_webhooks")
    hooks = sub.add_parser("webhooks", help="webhook endpoints (signed as OpenAI signs)")
    hsub = hooks.add_subparsers(dest="webhooks", required=True)
    p = _client(hsub, "create", "a new endpoint; prints its secret, shown only this once")
    p.add_argument("url", help="an http(s) URL on a public address")
    p.add_argument(
        "--event",
        dest="events",
        action="append",
        required=True,
        metavar="TYPE",
        help="an event type to send (repeat for more), e.g. job.succeeded, batch.completed",
    )
    p.set_defaults(func=hooks_cmd)
    p = _client(hsub, "list", "the endpoints (never their secrets)")
    add_output_options(p, "endpoint ids")
    p.set_defaults(func=hooks_cmd)
    for name, help_ in (
        ("delete", "delete an endpoint and its deliveries"),
        ("rotate", "a new secret (printed); the old one signs too for a grace period"),
    ):
        p = _client(hsub, name, help_)
        p.add_argument("id", help="the endpoint's id (whep_...)")
        p.set_defaults(func=hooks_cmd)
    p = _client(hsub, "deliveries", "an endpoint's deliveries, newest first, and their attempts")
    p.add_argument("id", help="the endpoint's id (whep_...)")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="at most N (1 to 100)")
    add_output_options(p, "delivery ids (the webhook-id header)")
    p.set_defaults(func=hooks_cmd)


def _add_drops_and_models(sub: Subparsers) -> None:
    drops_cmd = command("commands", "cmd_drops")
    drops = sub.add_parser("drops", help="S3 drop folders").add_subparsers(
        dest="drops", required=True
    )
    p = _client(drops, "add", "watch PREFIX/incoming/: each new file becomes a job")
    p.add_argument("name", help="a name for the drop folder")
    p.add_argument("--prefix", required=True, help="s3://bucket/path/")
    p.add_argument("--template", required=True, help="job spec without input/output (JSON/YAML)")
    p.set_defaults(func=drops_cmd)
    p = _client(drops, "list", "the drop folders")
    add_output_options(p, "drop folder names")
    p.set_defaults(func=drops_cmd)
    p = _client(drops, "remove", "stop watching a drop folder")
    p.add_argument("name", help="the drop folder's name")
    p.set_defaults(func=drops_cmd)

    _add_webhooks(sub)
    models_cmd = command("commands", "cmd_models")
    models = sub.add_parser("models", help="the model registry (barge models: list)")
    models.set_defaults(func=models_cmd, models="list", output=None)
    msub = models.add_subparsers(dest="models")
    p = _client(msub, "list", "the newest version of each model")
    add_output_options(p, "model refs (name@version)")
    p.set_defaults(func=models_cmd)
    p = _client(
        msub, "show", "every version of a model: its URI, base model, fine-tune job and metrics"
    )
    p.add_argument("name", help="the model's name")
    add_output_options(p, "model refs (name@version)")
    p.set_defaults(func=models_cmd)
    p = _client(msub, "register", "register a model directory as the next version")
    p.add_argument("name", help="the model's name")
    p.add_argument(
        "--uri",
        required=True,
        help="s3://bucket/path/ of a Hugging Face model directory, or of an ONNX one (model.onnx + barge.json)",
    )
    p.add_argument("--task", required=True, choices=list(TASKS), help="what the model does")
    p.set_defaults(func=models_cmd)


def _add_views(sub: Subparsers) -> None:
    p = _client(sub, "list", "list jobs, newest first")
    p.add_argument("--status", choices=JOB_STATUSES, help="only jobs in this status")
    p.add_argument("--type", choices=JOB_TYPES, help="only jobs of this type")
    p.add_argument("--limit", type=int, default=20, help="jobs per page (20, at most 200)")
    p.add_argument("--cursor", help="the next page: what the previous page printed after more:")
    add_output_options(p)
    p.set_defaults(func=command("commands", "cmd_list"))

    p = _client(sub, "top", "a live table of running, pausing, paused, cancelling and queued jobs")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    p.add_argument("--once", action="store_true", help="print the table once and exit")
    p.add_argument("--json", action="store_true", help="the active jobs once, as JSON")
    p.set_defaults(func=command("commands", "cmd_top"))

    p = sub.add_parser("demo", help="run a real embedding job on the embedded stack")
    p.add_argument("--port", type=int, default=8765, help="the API's port (8765)")
    p.add_argument("--records", type=int, default=2000, help="records to embed (2000)")
    p.set_defaults(func=command("demo", "cmd_demo"))


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("barge")
    except PackageNotFoundError:
        return "unknown (not installed)"


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, argparse.ArgumentParser, str | None]]:
    """Every command of ``parser`` (itself first, as ""): its path (``"keys create"``), its
    parser and the help its parent lists it with."""
    if not path:
        yield "", parser, None
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, child in action.choices.items():
                yield " ".join((*path, name)), child, helps.get(name)
                yield from walk(child, (*path, name))


def arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options and arguments of one command (``--help`` included)."""
    return list(parser._actions)


def _finish(parser: argparse.ArgumentParser) -> None:
    """Each command's help: its description, its options as written, its examples."""
    for path, p, help_ in walk(parser):
        p.formatter_class = HelpFormatter
        if path:
            p.description = p.description or help_
            examples = EXAMPLES.get(path, ())
            if examples:
                p.epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)


def build_parser() -> argparse.ArgumentParser:
    codes = "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES)
    parser = argparse.ArgumentParser(
        prog="barge",
        description=DESCRIPTION,
        epilog=EPILOG.format(codes=codes),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"barge {version()}")
    add_connection_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # In this order: it is the order of `barge --help`.
    _add_processes(sub)
    _add_admin(sub)
    _add_profiles(sub)
    _add_jobs(sub)
    _add_drops_and_models(sub)
    _add_views(sub)
    _finish(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # a usage error exits 2 here (argparse's own)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # here, so a reader that went away is seen below
        return status
    except (ApiError, CliError) as exc:
        print(f"barge: {exc}", file=sys.stderr)
        return exit_code(exc)
    except ValidationError as exc:
        print(f"barge: invalid BARGE_ settings:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Whoever read the output stopped (`barge list | head -1`): not an error of ours.
        # stdout is pointed at /dev/null so the interpreter's final flush does not fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
