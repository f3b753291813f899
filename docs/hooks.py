"""MkDocs hooks (``hooks:`` in mkdocs.yml): the reference pages' generated parts, built from the
code every time the site is built, so they cannot go stale; and a check that no page loads
anything from outside the site.

A page asks for a generated part with a marker on a line of its own:

- ``<!-- generated: openapi /openapi.json -->``: the native HTTP API, from the schema of the app
  ``api.app.create_app`` makes (``/openai/v1/openapi.json``: the OpenAI-compatible surface);
- ``<!-- generated: cli -->``: every ``barge`` command, from the parser of ``cli.main``;
- ``<!-- generated: settings -->``: every setting, from ``barge.settings.Settings``; each one's
  description is its field's ``description`` or its entry in ``docs/reference/settings.yml``.

Building needs no services and no network: the app is created over a throwaway embedded home
and nothing is served. A setting without a description, or a description of a setting that does
not exist, is a warning, so ``mkdocs build --strict`` (in ``make lint``) fails on it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("mkdocs.hooks.barge")

DOCS = Path(__file__).resolve().parent
SETTINGS_DESCRIPTIONS = DOCS / "reference" / "settings.yml"
MARKER = re.compile(r"^<!-- generated: (?P<kind>[a-z]+)(?: (?P<arg>\S+))? -->$", re.M)
# What makes a reader's browser fetch something: an element's src, a <link> that loads (a
# stylesheet, an icon, a preload: not rel="canonical", "next", ...), a CSS @import. Only links
# (<a href>) and those <link>s may point outside.
EXTERNAL = r"[\"'](?:https?:)?//"
EXTERNAL_ASSET = re.compile(
    rf"<(?:script|img|iframe|source|audio|video|embed)\b[^>]*?\s(?:src|srcset)={EXTERNAL}"
    rf"|<link\b(?=[^>]*\srel=[\"'][^\"']*(?:stylesheet|icon|preload|prefetch|preconnect|manifest))"
    rf"[^>]*?\shref={EXTERNAL}"
    rf"|@import\s+url\([\"']?(?:https?:)?//",
    re.I,
)


# --- the MkDocs events ---------------------------------------------------------------------------


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    return MARKER.sub(lambda m: generated(m["kind"], m["arg"], page.file.src_uri), markdown)


def on_post_page(output: str, page: Any, **_: Any) -> str:
    for found in EXTERNAL_ASSET.finditer(output):
        log.warning("%s loads something from outside the site: %s", page.file.src_uri, found[0])
    return output


def generated(kind: str, arg: str | None, where: str) -> str:
    if kind == "openapi" and arg:
        # Anchors: "api-..." for /openapi.json, "openai-v1-..." for /openai/v1/openapi.json.
        return openapi_markdown(
            api_schema(arg), anchor=slug(arg.removesuffix("/openapi.json")) or "api"
        )
    if kind == "cli":
        return cli_markdown()
    if kind == "settings":
        return settings_markdown()
    log.warning("%s: unknown marker 'generated: %s %s'", where, kind, arg or "")
    return ""


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cell(text: object) -> str:
    """Text that stays inside one table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


# --- the HTTP API, from the OpenAPI schemas ------------------------------------------------------


@cache
def api_schemas() -> dict[str, dict[str, Any]]:
    """The schema of every surface the API serves, by its URL path: the app's own and that of
    each mounted app with a schema (the OpenAI-compatible surface)."""
    from starlette.routing import Mount

    from api.app import create_app
    from barge.settings import Settings

    with tempfile.TemporaryDirectory(prefix="barge-docs-") as home:
        # Built without reading BARGE_* from the environment: the defaults, whatever is set.
        app = create_app(Settings.model_construct(home=Path(home)))
        schemas = {"/openapi.json": app.openapi()}
        for route in app.routes:
            if isinstance(route, Mount) and hasattr(route.app, "openapi"):
                schemas[f"{route.path}/openapi.json"] = route.app.openapi()
    return schemas


def api_schema(url: str) -> dict[str, Any]:
    schemas = api_schemas()
    if url not in schemas:
        raise KeyError(f"the API serves no schema at {url} (it serves {sorted(schemas)})")
    return schemas[url]


def openapi_markdown(schema: dict[str, Any], anchor: str) -> str:
    """Every operation (parameters, body, answers) and every schema of one OpenAPI document."""
    lines = []
    for name, scheme in schema.get("components", {}).get("securitySchemes", {}).items():
        lines += [f"Authentication (`{name}`): {scheme.get('scheme', scheme.get('type'))}.", ""]
        lines += [cell(scheme.get("description", "")), ""]
    lines += ["## Operations", ""]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            lines += operation_markdown(method, path, operation, anchor)
    lines += ["## Schemas", ""]
    for name, component in schema.get("components", {}).get("schemas", {}).items():
        lines += schema_markdown(name, component, anchor)
    return "\n".join(lines)


def operation_markdown(method: str, path: str, operation: dict[str, Any], anchor: str) -> list[str]:
    title = f"{method.upper()} {path}"
    lines = [f"### `{title}` {{#{anchor}-{slug(title)}}}", ""]
    summary = operation.get("summary", "")
    lines += [f"**{summary}.** {cell(operation.get('description', ''))}".strip(), ""]
    if params := operation.get("parameters"):
        lines += ["| parameter | in | type | required | default | description |"]
        lines.append("|---|---|---|---|---|---|")
        for p in params:
            schema = p.get("schema", {})
            required = "yes" if p.get("required") else ""
            default = f"`{json.dumps(schema['default'])}`" if "default" in schema else ""
            text = cell(p.get("description", schema.get("description", "")))
            lines.append(
                f"| `{p['name']}` | {p['in']} | {type_of(schema, anchor)} | {required} "
                f"| {cell(default)} | {text} |"
            )
        lines.append("")
    if body := operation.get("requestBody"):
        for media, content in body.get("content", {}).items():
            lines += [f"Body ({media}): {type_of(content.get('schema', {}), anchor)}", ""]
    lines += ["| answer | meaning | body |", "|---|---|---|"]
    for status, answer in operation.get("responses", {}).items():
        content = answer.get("content", {})
        bodies = ", ".join(type_of(c.get("schema", {}), anchor) for c in content.values())
        lines.append(f"| {status} | {cell(answer.get('description', ''))} | {bodies} |")
    return [*lines, ""]


def schema_markdown(name: str, schema: dict[str, Any], anchor: str) -> list[str]:
    lines = [f"### {name} {{#{anchor}-schema-{slug(name)}}}", ""]
    if text := schema.get("description"):
        lines += [cell(text), ""]
    properties = schema.get("properties", {})
    if not properties:
        return [*lines, f"Type: {type_of(schema, anchor, named=False)}", ""]
    required = set(schema.get("required", []))
    lines += ["| field | type | required | default | description |", "|---|---|---|---|---|"]
    for field, prop in properties.items():
        default = f"`{json.dumps(prop['default'])}`" if "default" in prop else ""
        text = cell(prop.get("description", ""))
        need = "yes" if field in required else ""
        lines.append(f"| `{field}` | {type_of(prop, anchor)} | {need} | {cell(default)} | {text} |")
    return [*lines, ""]


def type_of(schema: dict[str, Any], anchor: str, named: bool = True) -> str:
    """A schema as a short phrase: a link for a named schema, alternatives joined with "or"."""
    if ref := schema.get("$ref"):
        name = ref.rsplit("/", 1)[-1]
        return f"[{name}](#{anchor}-schema-{slug(name)})"
    if named and schema.get("title") and schema.get("oneOf"):
        return " or ".join(type_of(s, anchor) for s in schema["oneOf"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            kinds = [type_of(s, anchor) for s in schema[key]]
            text = " or ".join(dict.fromkeys(kinds))
            return f"{text} ({values_of(schema)})" if "enum" in schema else text
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return values_of(schema)
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {type_of(schema.get('items', {}), anchor)}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {type_of(schema['additionalProperties'], anchor)}"
    return kind + bounds_of(schema)


def number(value: float) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def values_of(schema: dict[str, Any]) -> str:
    return " \\| ".join(f"`{json.dumps(v)}`" for v in schema["enum"])


def bounds_of(schema: dict[str, Any]) -> str:
    bounds = [
        f"{word} {number(schema[key])}"
        for key, word in (
            ("minimum", "≥"),
            ("exclusiveMinimum", ">"),
            ("maximum", "≤"),
            ("exclusiveMaximum", "<"),
            ("minLength", "length ≥"),
            ("maxLength", "length ≤"),
        )
        if key in schema
    ]
    return f" ({', '.join(bounds)})" if bounds else ""


# --- the CLI, from its parser --------------------------------------------------------------------


def cli_markdown() -> str:
    from cli.main import build_parser

    with columns(100):
        return "\n".join(command_markdown(build_parser(), []))


@contextlib.contextmanager
def columns(width: int) -> Iterator[None]:
    """argparse wraps usage lines at the terminal's width: a fixed one, whatever builds."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


def command_markdown(parser: argparse.ArgumentParser, path: list[str]) -> list[str]:
    """One section per command, parents before their subcommands, in the parser's order."""
    title = " ".join(["barge", *path])
    lines = [f"### `{title}` {{#cli-{slug(title)}}}", ""]
    if parser.description and not path:
        lines += [cell(parser.description), ""]
    lines += ["```", parser.format_usage().strip(), "```", ""]
    rows = [row for action in parser._actions if (row := argument_row(action))]
    if rows:
        lines += ["| argument | default | what |", "|---|---|---|", *rows, ""]
    for name, help_, sub in subcommands(parser):
        child = command_markdown(sub, [*path, name])
        lines += [child[0], "", cell(help_ or ""), *child[1:]]
    return lines


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of each subcommand. argparse keeps each subcommand's help on the
    pseudo-action it lists in ``--help``: there is no public way to read either."""
    found = []
    for action in parser._actions:
        if isinstance(action.choices, dict):  # the subparsers action
            helps = {a.dest: a.help for a in getattr(action, "_choices_actions", [])}
            found += [(name, helps.get(name) or "", sub) for name, sub in action.choices.items()]
    return found


def argument_row(action: argparse.Action) -> str | None:
    if action.help == argparse.SUPPRESS or isinstance(action.choices, dict):
        return None
    if isinstance(action, argparse._HelpAction):
        return None
    if isinstance(action, argparse._VersionAction):
        return f"| `{', '.join(action.option_strings)}` | | print the installed version and exit |"
    metavar = None if action.nargs == 0 else (action.metavar or action.dest)
    if action.option_strings and action.nargs != 0 and not action.metavar:
        metavar = action.dest.upper()
    spelled = " ".join([*action.option_strings[:1], *([str(metavar)] if metavar else [])])
    spelled = ", ".join([spelled, *action.option_strings[1:]])
    notes = [help_text(action)]
    if action.required and action.option_strings:
        notes.append("required")
    if action.choices:
        notes.append("one of " + ", ".join(f"`{c}`" for c in action.choices))
    if action.nargs in ("+", "*"):
        notes.append("one or more")
    if type(action).__name__ in ("_AppendAction", "_ExtendAction"):
        notes.append("may be repeated")
    default = action.default
    shown = "" if default in (None, False, argparse.SUPPRESS) else f"`{default}`"
    return f"| `{spelled}` | {cell(shown)} | {'; '.join(n for n in notes if n)} |"


def help_text(action: argparse.Action) -> str:
    """The help as ``--help`` prints it (``%(default)s`` filled in, ``%%`` a percent sign)."""
    if not action.help:
        return ""
    try:
        return cell(action.help % {**vars(action), "prog": "barge"})
    except (KeyError, TypeError, ValueError):
        return cell(action.help)


# --- configuration, from Settings ----------------------------------------------------------------


def settings_markdown() -> str:
    from barge.settings import Settings

    described = settings_descriptions()
    lines = [
        "| variable | type | default | what |",
        "|---|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        env = f"BARGE_{name.upper()}"
        entry = described.get(name, {})
        text = field.description or entry.get("description")
        if not text:
            log.warning(
                "setting %s has no description: give its field one, or add it to %s",
                env,
                SETTINGS_DESCRIPTIONS.relative_to(DOCS.parent),
            )
        default = entry.get("default") or default_of(name, field)
        lines.append(
            f"| `{env}`{{#{slug(env)}}} | {cell(setting_type(field))} | {cell(default)} "
            f"| {cell(text or '')} |"
        )
    for name in sorted(set(described) - set(Settings.model_fields)):
        log.warning("%s describes %s, which is not a setting", SETTINGS_DESCRIPTIONS.name, name)
    return "\n".join(lines)


def settings_descriptions() -> dict[str, dict[str, str]]:
    data = yaml.safe_load(SETTINGS_DESCRIPTIONS.read_text()) or {}
    return {str(name): {str(k): str(v) for k, v in entry.items()} for name, entry in data.items()}


def default_of(name: str, field: Any) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None or value == "":
        return "unset"
    if isinstance(value, Path):
        value = str(value)
    text = f"`{json.dumps(value) if not isinstance(value, str) else value}`"
    if name.endswith("_bytes") and isinstance(value, int):
        text += size_of(value)
    return text


def size_of(count: int) -> str:
    for unit, power in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 2**power and count % 2**power == 0:
            return f" ({count // 2**power} {unit})"
    return ""


def setting_type(field: Any) -> str:
    """The type as the environment spells it, with the field's bounds."""
    import typing

    annotation = field.annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        text = " or ".join(f"`{a}`" if a else '`""`' for a in typing.get_args(annotation))
    elif origin in (list, dict):
        text = "JSON list" if origin is list else "JSON object"
    elif args and origin is not None:  # X | None
        text = type_name(args[0])
    else:
        text = type_name(annotation)
    bounds = [
        f"{word} {getattr(m, attr)}"
        for m in field.metadata
        for attr, word in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))
        if getattr(m, attr, None) is not None
    ]
    return text + (f" ({', '.join(bounds)})" if bounds else "")


def type_name(kind: Any) -> str:
    names = {str: "text", int: "integer", float: "number", bool: "boolean", Path: "path"}
    return names.get(kind, getattr(kind, "__name__", str(kind)))
