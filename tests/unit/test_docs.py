"""The written guides checked against the code: CONTRIBUTING.md and the package docstrings name
every package and module there is, and only paths that exist; the README stays a short first
read; the docs' job specs are valid; the site builds strict, offline, with its reference
generated from the code (docs/hooks.py)."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from barge.settings import Settings
from barge.specs import parse_spec

ROOT = Path(__file__).resolve().parents[2]
CONTRIBUTING = ROOT / "CONTRIBUTING.md"
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def package_roots() -> list[Path]:
    """The packages Barge ships, as pyproject.toml's package finder includes them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    return [ROOT / pattern.rstrip("*") for pattern in include]


def packages() -> list[Path]:
    found = []
    for root in package_roots():
        found += sorted(p.parent for p in root.rglob("__init__.py") if "__pycache__" not in p.parts)
    return found


def modules_of(package: Path) -> list[str]:
    """Its modules and subpackages, by the name an import uses."""
    names = [p.stem for p in package.glob("*.py") if p.stem not in ("__init__", "__main__")]
    names += [p.parent.name for p in package.glob("*/__init__.py")]
    return sorted(names)


def docstring_of(package: Path) -> str:
    import ast

    tree = ast.parse((package / "__init__.py").read_text())
    return ast.get_docstring(tree) or ""


def names(text: str, name: str) -> bool:
    """``name``, `name`, ``name/`` or a dotted path ending in it, as a literal."""
    return re.search(rf"`{{1,2}}(?:[\w.]+\.)?{re.escape(name)}/?`{{1,2}}", text) is not None


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# --- CONTRIBUTING.md and the package docstrings ---------------------------------------------------


@pytest.mark.parametrize("package", packages(), ids=relative)
def test_every_module_is_named_in_its_package_docstring(package: Path) -> None:
    doc = docstring_of(package)
    missing = [name for name in modules_of(package) if not names(doc, name)]
    assert not missing, (
        f"{relative(package)}/__init__.py's docstring does not name {missing}: "
        "say in it what each module holds"
    )


def test_every_package_is_named_in_contributing() -> None:
    guide = CONTRIBUTING.read_text()
    missing = [relative(p) + "/" for p in packages() if f"`{relative(p)}/`" not in guide]
    assert not missing, f"CONTRIBUTING.md's layout does not name {missing}"


def guide_paths(text: str) -> set[str]:
    """Every repository path a guide names in backticks (placeholders like <name> left out)."""
    tops = {p.name for p in ROOT.iterdir()}
    return {
        literal
        for literal in re.findall(r"`([^`\s]+)`", text)
        if re.fullmatch(r"[\w.\-/]+", literal)
        and literal.split("/")[0] in tops
        and ("/" in literal or Path(literal).suffix)
    }


def test_the_paths_contributing_names_exist() -> None:
    named = guide_paths(CONTRIBUTING.read_text())
    assert len(named) >= 40, sorted(named)  # the guide is made of them
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"CONTRIBUTING.md names paths that do not exist: {missing}"


def test_the_guide_finds_paths_and_leaves_placeholders() -> None:
    text = "`worker/tasks.py`, `migrations/versions/<NNNN>_<name>.py`, `BARGE_HOME`, `docs/`"
    assert guide_paths(text) == {"worker/tasks.py", "docs/"}


def test_the_site_shows_contributing() -> None:
    assert '--8<-- "CONTRIBUTING.md"' in (DOCS / "contributing.md").read_text()


# --- the README -----------------------------------------------------------------------------------


def test_the_readme_is_a_short_first_read() -> None:
    text = README.read_text()
    assert len(text.splitlines()) < 200
    for command in ("make demo", "make test", "make docs-serve"):
        assert command in text, command


@pytest.mark.parametrize("guide", [README, CONTRIBUTING], ids=lambda p: p.name)
def test_relative_links_resolve(guide: Path) -> None:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", guide.read_text())
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    missing = [link for link in local if not (guide.parent / link).exists()]
    assert not missing, missing


# --- the docs' examples ---------------------------------------------------------------------------


def doc_pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "incoming" not in p.relative_to(DOCS).parts)


def json_blocks(text: str) -> list[str]:
    """JSON code blocks, and the JSON files a shell block writes (``cat > f.json <<'JSON'``)."""
    return re.findall(r"```json\n(.*?)```", text, re.S) + re.findall(
        r"<<'JSON'\n(.*?)\nJSON\n", text, re.S
    )


def test_the_job_specs_in_the_docs_are_valid() -> None:
    """Every JSON job spec on a page (a block with a model and a task) is one Barge accepts."""
    checked = []
    for page in [README, *doc_pages()]:
        for block in json_blocks(page.read_text()):
            spec = json.loads(block)
            if isinstance(spec, dict) and "task" in spec and ({"model", "base_model"} & set(spec)):
                parse_spec(spec)
                checked.append((page.name, spec["task"]))
    assert len(checked) >= 8, checked


# --- the site -------------------------------------------------------------------------------------


def load_hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_setting_is_described() -> None:
    hooks = load_hooks()
    described = hooks.settings_descriptions()
    for name, field in Settings.model_fields.items():
        assert field.description or described.get(name, {}).get("description"), (
            f"BARGE_{name.upper()} has no description in docs/reference/settings.yml"
        )
    assert not set(described) - set(Settings.model_fields), "descriptions of no setting"


@pytest.mark.parametrize(
    ("html", "loads"),
    [
        ('<a href="https://example.org">a link may leave</a>', False),
        ('<link rel="canonical" href="http://127.0.0.1:8001/x.html">', False),
        ('<link rel="next" href="https://example.org/next.html">', False),
        ('<link rel="stylesheet" href="assets/main.css">', False),
        ('<script src="https://cdn.example/x.js"></script>', True),
        ('<img alt="" src="//images.example/x.png">', True),
        ('<link href="https://fonts.example/css" rel="stylesheet">', True),
        ('<link rel="preconnect" href="https://fonts.example" crossorigin>', True),
        ("<style>@import url('//fonts.example/css');</style>", True),
    ],
)
def test_a_page_that_loads_from_outside_fails_the_build(
    html: str, loads: bool, caplog: pytest.LogCaptureFixture
) -> None:
    hooks = load_hooks()
    page = SimpleNamespace(file=SimpleNamespace(src_uri="x.md"))
    with caplog.at_level(logging.WARNING):
        assert hooks.on_post_page(html, page=page) == html
    assert len(caplog.records) == loads, caplog.records


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={
            "NO_MKDOCS_2_WARNING": "1",
            "PATH": "/usr/bin:/bin",
            "HOME": str(out),
            "PYTHONUTF8": "1",
        },
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def ids_of(html: str) -> set[str]:
    return set(re.findall(r'\bid="([^"]+)"', html))


def test_the_cli_reference_has_every_command(site: Path) -> None:
    from cli.main import build_parser

    ids = ids_of((site / "reference" / "cli.html").read_text())

    def walk(parser: Any, path: list[str]) -> None:
        assert "cli-" + "-".join(["barge", *path]).replace("_", "-") in ids, path
        for action in parser._actions:
            if isinstance(action.choices, dict):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])

    walk(build_parser(), [])
    assert "cli-barge-keys-rotate" in ids


def test_the_configuration_reference_has_every_setting(site: Path) -> None:
    html = (site / "reference" / "configuration.html").read_text()
    for name in Settings.model_fields:
        assert f'id="barge-{name.replace("_", "-")}"' in html, name


def operation_ids(schema: dict[str, Any], prefix: str) -> set[str]:
    return {
        prefix + re.sub(r"[^a-z0-9]+", "-", f"{method} {path}".lower()).strip("-")
        for path, operations in schema["paths"].items()
        for method in operations
    }


def test_the_http_references_have_every_operation(site: Path) -> None:
    from starlette.routing import Mount

    from api.app import create_app

    app = create_app(Settings.model_construct(home=site / "home"))
    (openai,) = [r.app for r in app.routes if isinstance(r, Mount) and r.path == "/openai/v1"]
    for page, schema, prefix in (
        ("http-api.html", app.openapi(), "api-"),
        ("openai-api.html", openai.openapi(), "openai-v1-"),  # type: ignore[attr-defined]
    ):
        wanted = operation_ids(schema, prefix)
        assert len(wanted) >= 10, wanted
        missing = wanted - ids_of((site / "reference" / page).read_text())
        assert not missing, (page, sorted(missing))


def test_the_site_holds_pages_not_the_hooks_or_drafts(site: Path) -> None:
    shipped = {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()}
    assert "reference/cli.html" in shipped
    leaked = [p for p in shipped if p.endswith((".py", ".pyc", ".yml")) or "incoming" in p]
    assert not leaked, leaked


def test_the_site_loads_nothing_from_outside(site: Path) -> None:
    hooks = load_hooks()
    pages = list(site.rglob("*.html"))
    assert len(pages) >= len(doc_pages())
    for page in pages:
        assert not hooks.EXTERNAL_ASSET.search(page.read_text()), page
