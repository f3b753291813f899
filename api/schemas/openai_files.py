"""/openai/v1/files: the multipart upload body, which the handler reads itself as it streams
(``api.routers.openai.upload``) and the schema declares; a file as OpenAI's ``file`` object."""

from __future__ import annotations

from typing import Any

from db.models import OpenAIFile
from services.openai_files import PURPOSES

# The body the handler reads itself as it streams (api.routers.openai.upload), for the schema.
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": list(PURPOSES)},
                    },
                }
            }
        },
    }
}


def file_object(row: OpenAIFile) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": int(row.created_at.timestamp()),
        "filename": row.filename,
        "purpose": row.purpose,
        "status": "processed",
        "status_details": None,
    }


def deleted_file(file_id: str) -> dict[str, Any]:
    return {"id": file_id, "object": "file", "deleted": True}
