"""/openai/v1/fine_tuning/jobs: the create body (OpenAI's fields and Barge's ``barge``
extension) and the list's ``metadata[KEY]=VALUE`` filter, which the handler reads from the query
itself and the schema declares."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict


class FineTuningJobCreate(BaseModel):
    """A create request's body: OpenAI's fields and Barge's ``barge`` extension
    (``{"method": {"type": "lora", ...}}`` or ``{"type": "full"}``). Every field is taken as
    sent and checked by the service, so that each refusal names its field and says what to
    fix."""

    model_config = ConfigDict(extra="ignore")

    model: Any
    training_file: Any
    validation_file: Any = None
    hyperparameters: Any = None
    method: Any = None
    suffix: Any = None
    seed: Any = None
    metadata: Any = None
    integrations: Any = None
    barge: Any = None


METADATA_KEY = re.compile(r"^metadata\[(.{1,64})\]$")
# The metadata filter the handler reads from the query itself, for the schema.
METADATA_FILTER = {
    "parameters": [
        {
            "name": "metadata",
            "in": "query",
            "required": False,
            "style": "deepObject",
            "explode": True,
            "description": "metadata[KEY]=VALUE: only jobs whose metadata has KEY set to VALUE",
            "schema": {"type": "object", "additionalProperties": {"type": "string"}},
        }
    ]
}
