"""docker-compose.yml and the Dockerfile, checked by parsing them (no Docker engine needed).

Every Barge command in the compose file must be one the CLI accepts, every ``BARGE_*`` variable a
real setting, and the compose environment must build a valid production ``Settings``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from barge.queue import CONTROL_QUEUE, GPU_QUEUE, ROUTES
from barge.settings import Settings
from cli.main import build_parser
from cli.processes import flower_argv, flower_basic_auth, worker_queues

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_PATH = ROOT / "docker-compose.yml"
DOCKERFILE_PATH = ROOT / "Dockerfile"

EXPECTED_SERVICES = {
    "postgres",
    "rabbitmq",
    "minio",
    "minio-init",
    "migrate",
    "api",
    "worker",
    "control",
    "scheduler",
    "flower",
    "example",
    "prometheus",
}
BARGE_SERVICES = ("migrate", "api", "worker", "control", "scheduler", "flower")
SETTING_VARS = {f"BARGE_{name.upper()}" for name in Settings.model_fields}
# What the operator must supply; everything else has a default.
REQUIRED_ENV = {"FLOWER_PASSWORD": "flower-secret"}

_VAR = re.compile(
    r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(Exception):
    pass


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        value = env.get(name)
        unset = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if unset else str(value)
        if op in (":?", "?"):
            if unset:
                raise MissingVariable(f"{name}: {arg}")
            return str(value)
        return "" if value is None else value

    return _VAR.sub(one, value)


def resolve(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolve(item, env) for item in node]
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    return node


def load_compose(env: Mapping[str, str] = REQUIRED_ENV) -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_PATH.read_text())
    assert isinstance(data, dict)
    resolved = resolve(data, env)
    assert isinstance(resolved, dict)
    return resolved


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose["services"]
    return services


def argv(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE_PATH.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    out = []
    for line in lines:
        instruction, _, rest = line.partition(" ")
        out.append((instruction.upper(), rest.strip()))
    return out


def exec_form(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else ["/bin/sh", "-c", args]


def walk_keys(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from walk_keys(value)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, str) and "=" in item:
                yield item.split("=", 1)[0]
            yield from walk_keys(item)


# --- services and commands ----------------------------------------------------------------------


def test_expected_services_exist(services: dict[str, Any]) -> None:
    assert not EXPECTED_SERVICES - set(services), EXPECTED_SERVICES - set(services)


def test_images(services: dict[str, Any]) -> None:
    assert services["postgres"]["image"] == "postgres:16"
    assert services["rabbitmq"]["image"] == "rabbitmq:3.13-management"
    assert services["minio"]["image"].split(":")[0] == "minio/minio"
    assert services["minio-init"]["image"].split(":")[0] == "minio/mc"
    images = {services[name]["image"] for name in BARGE_SERVICES}
    assert len(images) == 1, f"the Barge services must share one image: {images}"
    for name in BARGE_SERVICES:
        assert services[name].get("build") in (".", {"context": "."}), name


@pytest.mark.parametrize(
    ("service", "command", "attrs"),
    [
        ("migrate", "db", {"db": "upgrade"}),
        ("api", "api", {"host": "0.0.0.0", "port": 8000}),
        ("worker", "worker", {"queues": "gpu", "concurrency": 1}),
        ("control", "worker", {"queues": "control", "control_concurrency": 2}),
        ("scheduler", "scheduler", {}),
        ("flower", "flower", {"address": "0.0.0.0", "port": 5555}),
    ],
)
def test_barge_service_commands(
    services: dict[str, Any], service: str, command: str, attrs: dict[str, Any]
) -> None:
    args = argv(services[service].get("command"))
    assert args[:1] == ["barge"], args
    try:
        parsed = build_parser().parse_args(args[1:])
    except SystemExit as exc:  # argparse rejected it
        pytest.fail(f"{service}: `{shlex.join(args)}` is not a valid barge command ({exc})")
    assert parsed.command == command
    for name, value in attrs.items():
        assert getattr(parsed, name) == value, (service, name)


def test_every_barge_command_parses(services: dict[str, Any]) -> None:
    found = []
    for name, service in services.items():
        args = argv(service.get("command"))
        if args[:1] != ["barge"]:
            continue
        found.append(name)
        try:
            build_parser().parse_args(args[1:])
        except SystemExit as exc:
            pytest.fail(f"{name}: `{shlex.join(args)}` is not a valid barge command ({exc})")
    assert {"migrate", "api", "worker", "control", "scheduler", "flower"} <= set(found)


def test_barge_image_runs_commands_as_given(services: dict[str, Any]) -> None:
    """The image has no ENTRYPOINT (or the service overrides it), so `celery ...` runs as is."""
    entrypoint = [args for inst, args in dockerfile_instructions() if inst == "ENTRYPOINT"]
    for name in BARGE_SERVICES:
        if entrypoint and "entrypoint" not in services[name]:
            pytest.fail(f"{name}: the Dockerfile ENTRYPOINT would prefix its command")
        assert argv(services[name]["command"])[0] in ("barge", "celery"), name


def flower_settings(service: Mapping[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for var in list(os.environ):
        if var.startswith("BARGE_"):
            monkeypatch.delenv(var)
    for var, value in service_env(service).items():
        monkeypatch.setenv(var, value)
    return Settings()


def test_flower_command(services: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """`barge flower` on the published port, credentials from its environment, not its argv."""
    flower = services["flower"]
    args = argv(flower["command"])
    parsed = build_parser().parse_args(args[1:])
    published = {str(p).rsplit(":", 1)[-1] for p in flower["ports"]}
    assert published == {str(parsed.port)}
    assert parsed.address == "0.0.0.0"  # inside the container; the host side binds BIND_ADDR

    password = REQUIRED_ENV["FLOWER_PASSWORD"]
    settings = flower_settings(flower, monkeypatch)
    assert flower_basic_auth(settings) == f"admin:{password}"
    celery = flower_argv(parsed.address, parsed.port, parsed.purge_offline_workers)
    app = celery[celery.index("-A") + 1]
    assert app == "worker.celery_app"
    assert (ROOT / Path(*app.split("."))).with_suffix(".py").is_file()
    assert "flower" in celery and "--port=5555" in celery
    for command in (args, celery):
        assert not any(password in a or "basic" in a.lower() for a in command), command


def test_flower_is_installed_by_the_flower_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    flower = project["optional-dependencies"]["flower"]
    assert any(re.match(r"flower\s*>=\s*2", dep) for dep in flower), flower


def test_flower_password_is_required() -> None:
    text = COMPOSE_PATH.read_text()
    assert "${FLOWER_PASSWORD:?" in text
    assert not re.search(r"\$\{FLOWER_PASSWORD(:?-|\})", text), "FLOWER_PASSWORD needs no default"
    with pytest.raises(MissingVariable, match="FLOWER_PASSWORD"):
        load_compose({})
    with pytest.raises(MissingVariable, match="FLOWER_PASSWORD"):
        load_compose({"FLOWER_PASSWORD": ""})
    # And `barge flower` itself refuses to run without one.
    with pytest.raises(ValueError, match="BARGE_FLOWER_PASSWORD"):
        flower_basic_auth(Settings(flower_password=""))


# --- environment --------------------------------------------------------------------------------


def test_every_barge_variable_is_a_setting(compose: dict[str, Any]) -> None:
    raw = yaml.safe_load(COMPOSE_PATH.read_text())
    keys = {k for k in walk_keys(raw) if k.startswith("BARGE_")}
    mentioned = set(re.findall(r"\bBARGE_[A-Z0-9_]+", COMPOSE_PATH.read_text()))
    for inst, args in dockerfile_instructions():
        if inst in ("ENV", "ARG"):
            mentioned |= set(re.findall(r"\bBARGE_[A-Z0-9_]+", args))
    assert keys, "the compose file sets no BARGE_ variables"
    unknown = (keys | mentioned) - SETTING_VARS
    assert not unknown, f"not fields of barge.settings.Settings: {sorted(unknown)}"


def test_barge_services_share_the_environment(services: dict[str, Any]) -> None:
    envs = {name: service_env(services[name]) for name in BARGE_SERVICES}
    barge_vars = {
        name: {k: v for k, v in env.items() if k.startswith("BARGE_")} for name, env in envs.items()
    }
    # The Flower credentials go to the flower service alone.
    flower_vars = {"BARGE_FLOWER_USER", "BARGE_FLOWER_PASSWORD"}
    for name, env in barge_vars.items():
        present = flower_vars & set(env)
        assert present == (flower_vars if name == "flower" else set()), (name, sorted(present))
        for var in flower_vars:
            env.pop(var, None)
    assert all(v == barge_vars["api"] for v in barge_vars.values()), barge_vars
    for name, env in envs.items():
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
            assert env.get(var), (name, var)


@pytest.mark.parametrize("service", BARGE_SERVICES)
def test_settings_from_compose_environment(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch, service: str
) -> None:
    for var in list(os.environ):
        if var.startswith("BARGE_"):
            monkeypatch.delenv(var)
    for var, value in service_env(services[service]).items():
        monkeypatch.setenv(var, value)
    settings = Settings()  # the BARGE_ENV=prod validator runs here
    assert settings.env == "prod"
    assert settings.database_url == "postgresql+psycopg://barge:barge@postgres:5432/barge"
    assert settings.broker_url == "amqp://barge:barge@rabbitmq:5672//"
    assert settings.storage_backend == "s3"
    assert settings.s3_endpoint_url == "http://minio:9000"
    assert settings.allowed_buckets == ["barge"]
    assert settings.cache_dir == Path("/var/cache/barge")
    assert not settings.is_filesystem_broker


def test_urls_match_the_services_they_point_at() -> None:
    """With non-default passwords too, the URLs carry the credentials the services are given."""
    env = {
        **REQUIRED_ENV,
        "POSTGRES_PASSWORD": "pg-pw",
        "RABBITMQ_PASSWORD": "mq-pw",
        "MINIO_ROOT_USER": "s3-user",
        "MINIO_ROOT_PASSWORD": "s3-password",
    }
    services = load_compose(env)["services"]
    app = service_env(services["api"])

    db = urlsplit(app["BARGE_DATABASE_URL"])
    pg = service_env(services["postgres"])
    assert (db.hostname, db.port) == ("postgres", 5432)
    assert (db.username, db.password) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"])
    assert db.password == "pg-pw"
    assert db.path.lstrip("/") == pg["POSTGRES_DB"]

    broker = urlsplit(app["BARGE_BROKER_URL"])
    mq = service_env(services["rabbitmq"])
    assert (broker.hostname, broker.port) == ("rabbitmq", 5672)
    assert (broker.username, broker.password) == (
        mq["RABBITMQ_DEFAULT_USER"],
        mq["RABBITMQ_DEFAULT_PASS"],
    )
    assert broker.password == "mq-pw"

    s3 = urlsplit(app["BARGE_S3_ENDPOINT_URL"])
    minio = service_env(services["minio"])
    assert (s3.hostname, s3.port) == ("minio", 9000)
    assert app["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"] == "s3-user"
    assert app["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"] == "s3-password"


def test_minio_password_default_is_long_enough(services: dict[str, Any]) -> None:
    assert len(service_env(services["minio"])["MINIO_ROOT_PASSWORD"]) >= 8  # MinIO refuses less


def test_minio_init_creates_the_allowed_bucket(services: dict[str, Any]) -> None:
    script = " ".join(
        argv(services["minio-init"].get("entrypoint")) + argv(services["minio-init"]["command"])
    )
    created = set(re.findall(r"mc mb (?:--ignore-existing |-p )*local/([a-z0-9.-]+)", script))
    allowed = json.loads(service_env(services["api"])["BARGE_ALLOWED_BUCKETS"])
    assert created and set(allowed) <= created, (created, allowed)
    assert services["minio-init"].get("restart", "no") == "no"


# --- ordering, health, GPU ----------------------------------------------------------------------


def test_startup_order(services: dict[str, Any]) -> None:
    assert depends_on(services["migrate"]) == {"postgres": "service_healthy"}
    api = depends_on(services["api"])
    assert api["migrate"] == "service_completed_successfully"
    assert api["rabbitmq"] == "service_healthy"
    assert api["minio-init"] == "service_completed_successfully"
    assert depends_on(services["minio-init"])["minio"] == "service_healthy"
    for name in ("worker", "control", "scheduler"):
        assert depends_on(services[name])["migrate"] == "service_completed_successfully", name
        assert depends_on(services[name])["rabbitmq"] == "service_healthy", name


def test_dependency_conditions_are_satisfiable(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for dep, condition in depends_on(service).items():
            assert dep in services, (name, dep)
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy"
            if condition == "service_completed_successfully":
                # A one-shot that restarts would never be "completed".
                assert services[dep].get("restart", "no") == "no", (name, dep)


def test_healthchecks(services: dict[str, Any]) -> None:
    def check(name: str) -> str:
        test = services[name]["healthcheck"]["test"]
        return test if isinstance(test, str) else " ".join(test)

    assert "pg_isready" in check("postgres")
    assert "rabbitmq-diagnostics -q ping" in check("rabbitmq")
    assert check("minio")
    api = check("api")
    assert "/healthz" in api
    assert "python" in api and "urllib" in api and "curl" not in api
    assert ":8000/" in api


def test_worker_reserves_a_gpu(services: dict[str, Any]) -> None:
    worker = services["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    gpus = [
        d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])
    ]
    assert gpus and gpus[0].get("count") == 1, devices
    env = service_env(worker)
    assert env.get("CUDA_VISIBLE_DEVICES")
    mounts = [
        v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in worker["volumes"]
    ]
    assert any(m.split(":")[1] == env["BARGE_CACHE_DIR"] for m in mounts), mounts


def worker_queues_of(service: Mapping[str, Any]) -> list[str]:
    """The queues a `barge worker` service consumes, as the CLI reads its command."""
    args = argv(service.get("command"))
    parsed = build_parser().parse_args(args[1:])
    assert parsed.command == "worker", args
    return worker_queues(parsed.queues)


def test_control_work_has_a_worker_of_its_own(services: dict[str, Any]) -> None:
    """Planning, finalizing, reconciling and drop scans never wait behind a shard: the GPU
    worker consumes only `gpu`, a separate service `control`, without a GPU or a model cache;
    every queue a task is routed to has a consumer."""
    assert worker_queues_of(services["worker"]) == [GPU_QUEUE]
    control = services["control"]
    assert worker_queues_of(control) == [CONTROL_QUEUE]
    assert "deploy" not in control and "CUDA_VISIBLE_DEVICES" not in service_env(control)
    consumed = {
        q
        for service in services.values()
        if argv(service.get("command"))[:2] == ["barge", "worker"]
        for q in worker_queues_of(service)
    }
    assert set(ROUTES.values()) <= consumed, (sorted(set(ROUTES.values())), sorted(consumed))
    for name in ("worker", "control"):  # warm shutdown: running tasks may end
        assert services[name].get("stop_grace_period"), name


def test_stores_have_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    declared = set(compose.get("volumes") or {})
    for name, target in (("postgres", "/var/lib/postgresql/data"), ("minio", "/data")):
        mounts = [v.split(":") for v in services[name]["volumes"]]
        assert any(m[1] == target and m[0] in declared for m in mounts), (name, mounts)


def test_rabbitmq_ports(services: dict[str, Any]) -> None:
    published = {str(p).rsplit(":", 1)[-1] for p in services["rabbitmq"]["ports"]}
    assert {"5672", "15672"} <= published


def test_minio_command(services: dict[str, Any]) -> None:
    assert argv(services["minio"]["command"]) == ["server", "/data", "--console-address", ":9001"]


# --- Dockerfile ---------------------------------------------------------------------------------


def test_dockerfile_base_and_install() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = [args for inst, args in instructions if inst == "RUN"]
    installs = [shlex.split(r) for r in runs if "pip install" in r]
    assert any("torch==2.13.*" in args and ".[flower]" in args for args in installs), installs
    # The same torch pin as pyproject.toml.
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch==2.13.*" in deps
    assert not re.search(r"https?://", DOCKERFILE_PATH.read_text()), (
        "no index URLs in the Dockerfile"
    )


def test_dockerfile_copies_the_project() -> None:
    copied: set[str] = set()
    for inst, args in dockerfile_instructions():
        if inst == "COPY":
            parts = [p for p in args.split() if not p.startswith("--")]
            copied |= {p.rstrip("/") for p in parts[:-1]}
    expected = {
        "cli",
        "api",
        "worker",
        "services",
        "db",
        "barge",
        "migrations",
        "pyproject.toml",
        "README.md",
        "alembic.ini",
    }
    assert expected <= copied, expected - copied
    missing = sorted(p for p in copied if not (ROOT / p).exists())
    assert not missing, f"the Dockerfile copies paths the repository lacks: {missing}"


def test_dockerfile_runs_as_non_root_and_starts_barge() -> None:
    instructions = dockerfile_instructions()
    users = [args for inst, args in instructions if inst == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    start = [exec_form(args) for inst, args in instructions if inst in ("ENTRYPOINT", "CMD")]
    assert start and start[0][0] == "barge", start
    cmd = [exec_form(args) for inst, args in instructions if inst == "CMD"][-1]
    try:
        build_parser().parse_args(cmd[1:])
    except SystemExit as exc:
        pytest.fail(f"the image's CMD `{shlex.join(cmd)}` is not a valid barge command ({exc})")


# --- the CPU override, the example data, Prometheus, the docs' examples -------------------------

CPU_OVERRIDE_PATH = ROOT / "docker-compose.cpu.yml"
PROMETHEUS_PATH = ROOT / "monitoring" / "prometheus.yml"
EXAMPLE_SCRIPT = ROOT / "scripts" / "compose_example.py"


class Reset:
    """Compose's ``!reset`` tag: the value is removed from what the base file set."""


class ComposeLoader(yaml.SafeLoader):
    pass


ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())


def merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file, enough for these files: mappings merge key by key,
    anything else (lists included, for the keys used here) is replaced, ``!reset`` removes."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            if isinstance(value, Reset):
                out.pop(key, None)
            else:
                out[key] = merge(base.get(key), value)
        return out
    return override


def load_with_cpu_override() -> dict[str, Any]:
    base = yaml.safe_load(COMPOSE_PATH.read_text())
    override = yaml.load(CPU_OVERRIDE_PATH.read_text(), Loader=ComposeLoader)
    resolved = resolve(merge(base, override), REQUIRED_ENV)
    assert isinstance(resolved, dict)
    return resolved


def test_the_cpu_override_starts_the_worker_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU-less host runs the same stack with `-f docker-compose.cpu.yml`: the worker
    reserves no device, sees no CUDA device and runs on the CPU; nothing else changes."""
    override = yaml.load(CPU_OVERRIDE_PATH.read_text(), Loader=ComposeLoader)
    assert set(override["services"]) == {"worker"}
    merged = load_with_cpu_override()["services"]
    worker = merged["worker"]
    devices = worker.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    assert not devices, worker.get("deploy")
    env = service_env(worker)
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["BARGE_DEVICE"] == "cpu"
    assert worker_queues_of(worker) == [GPU_QUEUE]  # the same command, the same queue
    for var in list(os.environ):
        if var.startswith("BARGE_"):
            monkeypatch.delenv(var)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert Settings().device == "cpu"
    assert {k for k in env if k.startswith("BARGE_")} <= SETTING_VARS
    base = load_compose()["services"]
    for name in set(base) - {"worker"}:
        assert merged[name] == base[name], name
    assert "docker-compose.cpu.yml" in COMPOSE_PATH.read_text()  # said where it is needed


def published_ports(service: Mapping[str, Any]) -> list[str]:
    return [str(p) for p in service.get("ports", [])]


def test_every_published_port_binds_bind_addr(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for port in published_ports(service):
            assert port.startswith("127.0.0.1:"), (name, port)
    raw = yaml.safe_load(COMPOSE_PATH.read_text())["services"]
    for name, service in raw.items():
        for port in service.get("ports", []):
            assert str(port).startswith("${BIND_ADDR:-127.0.0.1}:"), (name, port)


def test_optional_services_are_behind_profiles(services: dict[str, Any]) -> None:
    """`docker compose up` starts the stack; Prometheus and the example data only on request."""
    with_profiles = {name: s["profiles"] for name, s in services.items() if s.get("profiles")}
    assert with_profiles == {"prometheus": ["monitoring"], "example": ["example"]}


def test_prometheus_scrapes_the_api_and_the_gpu_workers(services: dict[str, Any]) -> None:
    prometheus = services["prometheus"]
    assert prometheus["image"].split(":")[0] == "prom/prometheus"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    assert mounts["/etc/prometheus/prometheus.yml"] == "./monitoring/prometheus.yml"
    assert any("--config.file=/etc/prometheus/prometheus.yml" in a for a in prometheus["command"])
    config = yaml.safe_load(PROMETHEUS_PATH.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}

    api = jobs["barge-api"]
    assert api.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in api["static_configs"] for t in sc["targets"]]
    api_port = build_parser().parse_args(argv(services["api"]["command"])[1:]).port
    assert targets == [f"api:{api_port}"]

    env = service_env(services["worker"])
    port = int(env["BARGE_WORKER_METRICS_PORT"])
    assert port and env["BARGE_WORKER_METRICS_HOST"] == "0.0.0.0"  # the compose network only
    assert not any(str(port) in p for p in published_ports(services["worker"]))
    worker = jobs["barge-worker"]
    found = {(n, sd["port"]) for sd in worker["dns_sd_configs"] for n in sd["names"]}
    concurrency = build_parser().parse_args(argv(services["worker"]["command"])[1:]).concurrency
    assert found == {("worker", port + i) for i in range(concurrency)}, found
    for job in jobs.values():  # every target is a service of this file
        names = [t.split(":")[0] for sc in job.get("static_configs", []) for t in sc["targets"]]
        names += [n for sd in job.get("dns_sd_configs", []) for n in sd["names"]]
        assert set(names) <= set(services), names


# A code block whose locations are not meant for the compose stack (an operator granting other
# prefixes, say) says so on the line before it.
NOT_ON_COMPOSE = "<!-- not run on the compose stack"


def example_pages() -> list[Path]:
    """The README and every page of the docs site (drafts in docs/incoming/ left out)."""
    docs = sorted(p for p in (ROOT / "docs").rglob("*.md") if "incoming" not in p.parts)
    return [ROOT / "README.md", *docs]


def example_blocks(text: str) -> list[str]:
    """The code blocks of a page, except those marked as not for the compose stack."""
    blocks = re.finditer(
        r"(?P<before>[^\n]*)\n```(?:json|bash|python)?\n(?P<code>.*?)```", text, re.S
    )
    return [b["code"] for b in blocks if not b["before"].startswith(NOT_ON_COMPOSE)]


def example_uris() -> set[str]:
    """Every s3:// URI in the examples (code blocks) of the README and the docs, `{...}`
    placeholders left out."""
    blocks = [b for page in example_pages() for b in example_blocks(page.read_text())]
    found = {u.rstrip(".,'\")") for b in blocks for u in re.findall(r"s3://[^\s\"'`]+", b)}
    return {u for u in found if "{" not in u}


def test_example_blocks_leave_out_only_marked_ones() -> None:
    text = "intro\n```bash\ns3://barge/acme/a\n```\n" + NOT_ON_COMPOSE + " -->\n```bash\nb\n```\n"
    assert example_blocks(text) == ["s3://barge/acme/a\n"]


def test_the_docs_examples_work_on_the_compose_stack(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every location the examples of the README and the docs name is in the bucket compose
    creates and allows, inside the default scopes of the tenant `barge keys create --tenant acme`
    makes, and the example service puts there what the examples read."""
    uris = example_uris()
    assert len(uris) >= 5, uris
    allowed = json.loads(service_env(services["api"])["BARGE_ALLOWED_BUCKETS"])
    for var in list(os.environ):  # the stack's settings, not this test run's
        if var.startswith("BARGE_"):
            monkeypatch.delenv(var)
    for var, value in service_env(services["api"]).items():
        monkeypatch.setenv(var, value)
    scopes = [s.format(tenant="acme") for s in Settings().tenant_read_scopes]
    for uri in uris:
        assert uri.split("/")[2] in allowed, uri
        assert any(uri.startswith(scope) for scope in scopes), (uri, scopes)

    example = services["example"]
    (mount,) = example["volumes"]
    source, target = mount.split(":")[:2]
    assert (ROOT / source).resolve() == EXAMPLE_SCRIPT
    assert argv(example["command"]) == ["python", target]
    assert depends_on(example) == {"minio-init": "service_completed_successfully"}
    assert example["image"] == services["api"]["image"]  # the image ships the MiniLM model
    script = EXAMPLE_SCRIPT.read_text()
    assert 'BUCKET = "barge"' in script and '"acme"' in script
    read = {
        "s3://barge/acme/models/all-minilm-l6-v2/": "models/all-minilm-l6-v2/",
        "s3://barge/acme/reviews/": "reviews/part-0.jsonl",
        "s3://barge/acme/tickets/train.jsonl": "tickets/{name}.jsonl",
        "s3://barge/acme/tickets/val.jsonl": "tickets/{name}.jsonl",
    }
    for uri, written in read.items():
        assert uri in uris, uri  # the docs still name it
        assert f'f"{{root}}{written}"' in script, written
