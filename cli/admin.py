"""Administration: ``barge db upgrade`` and ``barge keys create``, the commands that work on the
database itself rather than through the API (``up`` and the demo use them too).

Imports: ``services`` (tenants and keys), ``db`` (migrations, session scopes) and the kernel.
"""

from __future__ import annotations

import argparse
import sys

from barge.settings import get_settings
from db.migrate import upgrade
from db.session import session_scope
from services import tenants


def db_upgrade() -> str:
    """Bring the configured database to the newest migration; return its URL."""
    url = get_settings().resolved_database_url
    upgrade(url)
    return url


def create_key(tenant: str) -> str:
    """A new API key for ``tenant`` (created if new); the key itself, shown only this once."""
    with session_scope(get_settings().resolved_database_url) as session:
        return tenants.create_key(session, tenant)


def cmd_db_upgrade(_: argparse.Namespace) -> int:
    url = db_upgrade()
    print(f"database at {url.split('@')[-1]} is at the newest schema", file=sys.stderr)
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    print(create_key(args.tenant))
    return 0
