"""/openai/v1/batches: the create body."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, Any] | None = None
