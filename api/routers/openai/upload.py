"""Reading a multipart upload as it streams: the ``file`` part goes to a temporary file on disk
chunk by chunk (never whole in memory) and stops at the size limit; small fields are kept."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from services.openai_files import BadRequest, check_text

MAX_FIELD_BYTES = 4096


class _TooLarge(Exception):
    pass


@dataclass
class Upload:
    path: Path | None = None
    filename: str = ""
    size: int = 0
    fields: dict[str, str] = field(default_factory=dict)


def _disposition(value: bytes) -> tuple[str, str | None]:
    _, params = parse_options_header(value)
    name = params.get(b"name", b"").decode("utf-8", "replace")
    filename = params.get(b"filename")
    return name, filename.decode("utf-8", "replace") if filename is not None else None


async def read_upload(request: Request, directory: Path, limit: int) -> Upload:
    """The upload's ``file`` spooled under ``directory`` and its other fields; BadRequest when
    it is not multipart, has no file or a field is too long; ``None`` path when the file part
    is missing. Raises ``_TooLarge`` past ``limit`` bytes of file (the caller answers 413)."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise BadRequest("the body must be multipart/form-data with a file part", field="file")
    out = Upload()
    directory.mkdir(parents=True, exist_ok=True)
    spool = tempfile.NamedTemporaryFile(dir=directory, prefix="upload-", delete=False)  # noqa: SIM115
    out_path = Path(spool.name)
    state: dict[str, Any] = {"header": b"", "value": b"", "headers": {}, "name": None, "buf": []}

    def on_part_begin() -> None:
        state["headers"] = {}
        state["name"] = None
        state["buf"] = []
        state["is_file"] = False

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["header"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["header"].lower()] = state["value"]
        state["header"] = b""
        state["value"] = b""

    def on_headers_finished() -> None:
        name, filename = _disposition(state["headers"].get(b"content-disposition", b""))
        state["name"] = name
        state["is_file"] = name == "file"
        if state["is_file"]:
            out.filename = filename or "upload.jsonl"
            out.path = out_path

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["is_file"]:
            out.size += end - start
            if out.size > limit:
                raise _TooLarge()
            spool.write(data[start:end])
        else:
            state["buf"].append(data[start:end])
            if sum(len(b) for b in state["buf"]) > MAX_FIELD_BYTES:
                raise BadRequest(f"field {state['name']!r} is too long", field=state["name"])

    def on_part_end() -> None:
        if not state["is_file"] and state["name"]:
            value = b"".join(state["buf"]).decode("utf-8", "replace")
            out.fields[state["name"]] = check_text(state["name"], value)

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except (_TooLarge, BadRequest, ClientDisconnect):
        spool.close()
        out_path.unlink(missing_ok=True)
        raise
    except Exception as exc:  # a malformed multipart body
        spool.close()
        out_path.unlink(missing_ok=True)
        raise BadRequest(
            f"the multipart body could not be read: {exc}"[:300], field="file"
        ) from None
    spool.close()
    if out.path is None:
        out_path.unlink(missing_ok=True)
    return out


TooLarge = _TooLarge
