"""Run Alembic programmatically (``barge db upgrade``, tests, the embedded stack), and check that a
database's schema is the one the migrations build before anything uses it."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from barge.errors import ServiceUnavailable

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


class SchemaNotCurrent(ServiceUnavailable):
    """the database schema is missing or old: run `barge db upgrade`"""

    code = "schema_not_current"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)


@functools.cache
def _migrations() -> tuple[frozenset[str], frozenset[str]]:
    """The head revisions of the migrations, and every revision they know."""
    scripts = ScriptDirectory.from_config(alembic_config(""))
    known = frozenset(s.revision for s in scripts.walk_revisions())
    return frozenset(scripts.get_heads()), known


def check_schema(conn: Connection) -> None:
    """Raise SchemaNotCurrent unless the database is at the migrations' head. A revision the
    migrations do not know was made by a newer Barge (a rolling upgrade migrates first): that is
    allowed, with a warning."""
    heads, known = _migrations()
    found = frozenset(MigrationContext.configure(conn).get_current_heads())
    if found == heads:
        return
    if found and not found & known:
        log.warning(
            "the database schema (revision %s) is newer than this Barge's migrations (%s): "
            "upgrade Barge",
            ", ".join(sorted(found)),
            ", ".join(sorted(heads)),
        )
        return
    raise SchemaNotCurrent()
