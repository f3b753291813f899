"""Images named by URI inside records: tenant A's records name tenant B's images every way a
URI can be spelled; each is a per-record error and the S3 server (behind a recording proxy)
never receives a request for B's bucket, while A's own images are classified."""

from __future__ import annotations

import base64
from typing import Any

from tests.faults.conftest import World
from tests.faults.s3proxy import S3FaultProxy
from tests.helpers import inference_spec, put_jsonl, read_jsonl, upload_dir, wait_until
from tests.images import encode, random_rgb, tiny_vit
from tests.security.test_isolation import objects, scoped_tenant, touched


def test_image_uris_outside_the_tenants_scopes_are_never_fetched(
    world: World, s3: Any, s3_server: Any
) -> None:
    a = scoped_tenant(world.database_url, s3, "imga")
    b = scoped_tenant(world.database_url, s3, "imgb")
    model = upload_dir(s3, a.bucket, "models/vit", tiny_vit(world.tmp / "vit"))
    image = encode(random_rgb(20, 20, 1), "PNG")
    s3.put_object(Bucket=a.bucket, Key="img/mine.png", Body=image)
    s3.put_object(Bucket=b.bucket, Key="img/secret.png", Body=image)
    theirs = [
        b.uri("img/secret.png"),
        f"s3://{b.bucket}//img/secret.png",
        f"s3://{a.bucket}/img/../../{b.bucket}/img/secret.png",
        f"S3://{b.bucket}/img/secret.png",
        f"s3://{b.bucket.upper()}/img/secret.png",
        f"s3://{a.bucket}.evil/../{b.bucket}/img/secret.png",
    ]
    rows = [
        {"id": "mine", "image": a.uri("img/mine.png")},
        {"id": "inline", "image": base64.b64encode(image).decode()},
        *({"id": f"theirs-{i}", "image": uri} for i, uri in enumerate(theirs)),
    ]
    data = put_jsonl(s3, a.bucket, "refs.jsonl", rows)
    before = objects(s3, b.bucket)
    spec = {
        **inference_spec(model, data, a.uri("out/"), task="image_classify"),
        "image_field": "image",
        "id_field": "id",
        "max_failed_ratio": 1.0,
    }
    with S3FaultProxy(s3_server.url) as proxy:
        world.worker(BARGE_S3_ENDPOINT_URL=proxy.url)
        r = world.api.post("/v1/jobs", json=spec, headers=a.auth)
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        job = wait_until(
            lambda: (
                (j := world.api.get(f"/v1/jobs/{job_id}", headers=a.auth).json())["status"]
                in ("failed", "succeeded")
                and j
            ),
            timeout=120,
            what="the job to end",
        )
        assert job["status"] == "succeeded", job
        assert touched(proxy, b.bucket) == []
    out = [r["id"] for r in read_jsonl(s3, a.bucket, "out/part-00000.jsonl")]
    assert out == ["mine", "inline"]
    errors = read_jsonl(s3, a.bucket, "out/errors/part-00000.jsonl")
    assert [e["id"] for e in errors] == [f"theirs-{i}" for i in range(len(theirs))]
    assert objects(s3, b.bucket) == before
