"""Reading a multipart upload as it streams: the ``file`` part goes to a temporary file on disk
chunk by chunk (never whole in memory) and stops at the size limit; small fields are kept."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from services.openai_files import BadRequest, check_text

if TYPE_CHECKING:  # the library declares its callbacks' type for type checkers only
    from python_multipart.multipart import MultipartCallbacks

MAX_FIELD_BYTES = 4096


class TooLarge(Exception):
    """The file part is over the limit (the caller answers 413)."""


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


class Parts:
    """The multipart parser's callbacks: each part's headers, then its data, to the spool file
    (the ``file`` part) or to a small field."""

    def __init__(self, out: Upload, spool: IO[bytes], spool_path: Path, limit: int):
        self.out, self.spool, self.spool_path, self.limit = out, spool, spool_path, limit
        self.header, self.value = b"", b""
        self.headers: dict[bytes, bytes] = {}
        self.name: str | None = None
        self.buf: list[bytes] = []
        self.is_file = False

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self.headers, self.name, self.buf, self.is_file = {}, None, [], False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header.lower()] = self.value
        self.header, self.value = b"", b""

    def on_headers_finished(self) -> None:
        self.name, filename = _disposition(self.headers.get(b"content-disposition", b""))
        self.is_file = self.name == "file"
        if self.is_file:
            self.out.filename = filename or "upload.jsonl"
            self.out.path = self.spool_path

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.is_file:
            self.out.size += end - start
            if self.out.size > self.limit:
                raise TooLarge()
            self.spool.write(data[start:end])
        else:
            self.buf.append(data[start:end])
            if sum(len(b) for b in self.buf) > MAX_FIELD_BYTES:
                raise BadRequest(f"field {self.name!r} is too long", field=self.name)

    def on_part_end(self) -> None:
        if not self.is_file and self.name:
            value = b"".join(self.buf).decode("utf-8", "replace")
            self.out.fields[self.name] = check_text(self.name, value)


async def read_upload(request: Request, directory: Path, limit: int) -> Upload:
    """The upload's ``file`` spooled under ``directory`` and its other fields; BadRequest when
    it is not multipart, has no file or a field is too long; ``None`` path when the file part
    is missing. Raises ``TooLarge`` past ``limit`` bytes of file (the caller answers 413)."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise BadRequest("the body must be multipart/form-data with a file part", field="file")
    out = Upload()
    directory.mkdir(parents=True, exist_ok=True)
    spool = tempfile.NamedTemporaryFile(dir=directory, prefix="upload-", delete=False)  # noqa: SIM115
    spool_path = Path(spool.name)
    parser = MultipartParser(boundary, Parts(out, spool, spool_path, limit).callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except (TooLarge, BadRequest, ClientDisconnect):
        spool.close()
        spool_path.unlink(missing_ok=True)
        raise
    except Exception as exc:  # a malformed multipart body
        spool.close()
        spool_path.unlink(missing_ok=True)
        raise BadRequest(
            f"the multipart body could not be read: {exc}"[:300], field="file"
        ) from None
    spool.close()
    if out.path is None:
        spool_path.unlink(missing_ok=True)
    return out
