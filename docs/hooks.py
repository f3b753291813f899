"""MkDocs hooks (``hooks:`` in mkdocs.yml): a check that no page loads anything from outside the
site, so the built site works offline and a reader's browser fetches nothing elsewhere. A page
that does is a warning, so ``mkdocs build --strict`` (in ``make lint``) fails on it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger("mkdocs.hooks.barge")

# An element that makes a reader's browser fetch something: only links (<a href>) may leave.
EXTERNAL_ASSET = re.compile(
    r"<(?:script|img|iframe|source|audio|video|embed|link)\b[^>]*?\s(?:src|href|srcset)="
    r"[\"'](?:https?:)?//|@import\s+url\([\"']?(?:https?:)?//",
    re.I,
)


# --- the MkDocs events ---------------------------------------------------------------------------


def on_post_page(output: str, page: Any, **_: Any) -> str:
    for found in EXTERNAL_ASSET.finditer(output):
        log.warning("%s loads something from outside the site: %s", page.file.src_uri, found[0])
    return output
