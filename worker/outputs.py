"""Part writers: spool a shard's rows to a local file, then upload it in one atomic PUT."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class JsonlPart:
    ext = "jsonl"

    def __init__(self, path: Path):
        self.path = path
        self.count = 0
        self._f = path.open("w", encoding="utf-8")

    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        self._f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        self.count += len(rows)

    def close(self) -> None:
        self._f.close()


class ParquetPart:
    ext = "parquet"

    def __init__(self, path: Path):
        self.path = path
        self.count = 0
        self._writer: Any = None

    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not rows:
            return
        table = pa.Table.from_pylist(rows)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema)
        else:
            table = table.cast(self._writer.schema)
        self._writer.write_table(table)
        self.count += len(rows)

    def close(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None:  # an empty part still has a readable file
            pq.write_table(pa.table({"id": pa.array([], pa.string())}), self.path)
        else:
            self._writer.close()


def make_part(output_format: str, path: Path) -> JsonlPart | ParquetPart:
    return ParquetPart(path) if output_format == "parquet" else JsonlPart(path)


def part_name(index: int, ext: str) -> str:
    return f"part-{index:05d}.{ext}"


def errors_name(index: int) -> str:
    return f"errors/part-{index:05d}.jsonl"
