"""/openai/v1/files: the multipart upload body, which the handler reads itself as it streams
(``api.routers.openai.upload``) and the schema declares."""

from __future__ import annotations

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
