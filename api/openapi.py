"""The OpenAPI schema, with what FastAPI cannot say by itself: the job body's discriminator
(`type` picks inference or finetune; left out, it is inference), and no 422 FastAPI adds by
default to operations that cannot answer one (an operation that can declares its own, in
Barge's error shape: FastAPI's HTTPValidationError shape is never answered). The OpenAI
surface's app (``/openai/v1/openapi.json``) is installed the same way: it answers a 400 in
OpenAI's envelope where FastAPI would say 422."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

SCHEMAS = "#/components/schemas/"
JOB_BODY_MAPPING = {"inference": f"{SCHEMAS}InferenceSpec", "finetune": f"{SCHEMAS}FinetuneSpec"}


def _job_body(schema: dict[str, Any]) -> None:
    if "/v1/jobs" not in schema["paths"]:
        return  # the OpenAI surface's app
    body = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    body["schema"] = {
        "oneOf": [{"$ref": ref} for ref in JOB_BODY_MAPPING.values()],
        "discriminator": {"propertyName": "type", "mapping": JOB_BODY_MAPPING},
        "title": "JobSpec",
        "description": 'An inference job, or a fine-tune with `"type": "finetune"`; '
        "`type` left out means inference.",
    }


def _only_declared_errors(schema: dict[str, Any]) -> None:
    default = f"{SCHEMAS}HTTPValidationError"
    for operations in schema["paths"].values():
        for operation in operations.values():
            answer = operation.get("responses", {}).get("422", {})
            media = answer.get("content", {}).get("application/json", {})
            if media.get("schema", {}).get("$ref") == default:
                del operation["responses"]["422"]
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)


def install_openapi(app: FastAPI) -> None:
    """Replace ``app.openapi`` with one that builds the schema once, then adds the above."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            _job_body(schema)
            _only_declared_errors(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
