"""Attacks repeated on real processes: model directories and checkpoint pointers that try to
write files outside their directory, two spellings of one output, outputs inside other jobs'
outputs or inputs, oversized model configs and token lengths.

Each test checks the data: no file outside its directory, no record lost, the job ends once with
a clear error, never a 5xx."""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tests.faults.conftest import World
from tests.helpers import (
    finetune_spec,
    inference_spec,
    manifest,
    put_jsonl,
    read_jsonl,
    tiny_classifier,
    topic_examples,
    upload_dir,
    wait_job,
    wait_until,
)


def _peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def _texts(n: int) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "text": f"a fine review number {i}"} for i in range(n)]


class TestModelDirectory:
    def test_keys_with_absolute_or_dotdot_parts_write_nothing_outside_the_cache(
        self,
        api: TestClient,
        auth: dict[str, str],
        s3: Any,
        bucket: str,
        worker: Any,
        tmp_path: Path,
        settings: Any,
    ) -> None:
        prefix = f"evil-{uuid.uuid4().hex[:6]}"
        model = upload_dir(s3, bucket, prefix, tiny_classifier(tmp_path / "clf"))
        targets = {
            "absolute": tmp_path / "pwned" / "abs.txt",
            "dotdot": tmp_path / "pwned" / "rel.txt",
            "sitecustomize": tmp_path / "pwned" / "site-packages" / "sitecustomize.py",
            "nested": tmp_path / "pwned" / "nested.txt",
        }
        ups = "../" * 40
        keys = {
            "absolute": f"{prefix}/{targets['absolute']}",  # evil//tmp/...: an absolute part
            "dotdot": f"{prefix}/{ups}{str(targets['dotdot'])[1:]}",
            "sitecustomize": f"{prefix}/{ups}{str(targets['sitecustomize'])[1:]}",
            "nested": f"{prefix}/1_Pooling/{ups}{str(targets['nested'])[1:]}",
        }
        for key in keys.values():
            s3.put_object(Bucket=bucket, Key=key, Body=b"import os; os.system('touch /tmp/x')\n")
        data = put_jsonl(s3, bucket, f"{prefix}-in/data.jsonl", _texts(10))
        out = f"s3://{bucket}/{prefix}-out/"
        r = api.post(
            "/v1/jobs", json=inference_spec(model, data, out, task="classify"), headers=auth
        )
        assert r.status_code == 201, r.text
        job = wait_job(api, auth, r.json()["id"])
        # The model's own files are used; the planted keys are never copied anywhere.
        assert job["status"] == "succeeded", job
        assert len(read_jsonl(s3, bucket, f"{prefix}-out/part-00000.jsonl")) == 10
        for name, target in targets.items():
            assert not target.exists(), f"{name}: {target} was written"
        assert not (tmp_path / "pwned").exists()
        copies = [p for p in (settings.resolved_cache_dir / "models").iterdir() if p.is_dir()]
        for copy in copies:
            for path in copy.rglob("*"):
                assert path.resolve().is_relative_to(copy.resolve())
                assert "/" not in str(path.relative_to(copy)), f"nested file copied: {path}"

    def test_a_config_far_bigger_than_its_weights_fails_the_job_before_allocating(
        self,
        api: TestClient,
        auth: dict[str, str],
        s3: Any,
        bucket: str,
        worker: Any,
        tmp_path: Path,
    ) -> None:
        directory = tiny_classifier(tmp_path / "huge")
        config = json.loads((directory / "config.json").read_text())
        config.update(hidden_size=65536, intermediate_size=262144, num_hidden_layers=48)
        config.update(num_attention_heads=64, vocab_size=2_000_000)
        (directory / "config.json").write_text(json.dumps(config))
        prefix = f"huge-{uuid.uuid4().hex[:6]}"
        model = upload_dir(s3, bucket, prefix, directory)
        data = put_jsonl(s3, bucket, f"{prefix}-in/data.jsonl", _texts(3))
        spec = inference_spec(model, data, f"s3://{bucket}/{prefix}-out/", task="classify")
        r = api.post("/v1/jobs", json=spec, headers=auth)
        assert r.status_code == 201, r.text
        job = wait_job(api, auth, r.json()["id"])
        assert job["status"] == "failed", job
        assert "config.json describes" in job["error"], job["error"]
        assert "refusing to build it" in job["error"]
        assert worker.proc is not None
        for child in worker.pool_pids():
            # MiniLM and the tiny models weigh well under 2 GB; the config asks for terabytes.
            assert _peak_rss_bytes(child) < 3 * 2**30

    def test_max_length_above_the_model_limit_is_clamped_not_a_record_error(
        self,
        api: TestClient,
        auth: dict[str, str],
        s3: Any,
        bucket: str,
        worker: Any,
        classifier_uri: str,
    ) -> None:
        # The tiny classifier takes 128 positions; 600-word texts with max_length 4096.
        rows = [{"id": i, "text": " ".join(["word"] * 600)} for i in range(4)]
        data = put_jsonl(s3, bucket, "long/data.jsonl", rows)
        spec = inference_spec(
            classifier_uri,
            data,
            f"s3://{bucket}/long-out/",
            task="classify",
            params={"max_length": 4096},
        )
        r = api.post("/v1/jobs", json=spec, headers=auth)
        assert r.status_code == 201, r.text
        job = wait_job(api, auth, r.json()["id"])
        assert job["status"] == "succeeded", job
        assert job["progress"]["records_failed"] == 0
        assert [r["id"] for r in read_jsonl(s3, bucket, "long-out/part-00000.jsonl")] == [
            0,
            1,
            2,
            3,
        ]


class TestCheckpointPointer:
    def test_a_pointer_planted_before_submit_is_refused(
        self, api: TestClient, auth: dict[str, str], s3: Any, bucket: str, encoder_uri: str
    ) -> None:
        train = put_jsonl(s3, bucket, "plant/train.jsonl", topic_examples(30, seed=1))
        pointer = {"uri": "s3://other-bucket/ck/", "files": ["/tmp/z.txt"]}
        s3.put_object(
            Bucket=bucket, Key="plant/ft/checkpoints/latest.json", Body=json.dumps(pointer)
        )
        spec = finetune_spec(encoder_uri, train, "planted", output=f"s3://{bucket}/plant/ft/")
        r = api.post("/v1/jobs", json=spec, headers=auth)
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "output"
        assert "checkpoints" in r.json()["message"]

    def test_a_pointer_planted_after_a_crash_fails_the_job_and_writes_nothing(
        self, world: World, s3: Any, bucket: str, encoder_uri: str, tmp_path: Path
    ) -> None:
        train = put_jsonl(s3, bucket, "crash/train.jsonl", topic_examples(240, seed=1))
        spec = finetune_spec(
            encoder_uri,
            train,
            "crashed",
            hyperparameters={"epochs": 30, "batch_size": 16, "learning_rate": 1e-3},
            output=f"s3://{bucket}/crash/ft/",
            checkpoint_every_steps=10,
        )
        first = world.worker()
        world.start_scheduler()
        job_id = world.submit(spec)
        wait_until(
            lambda: any(
                e["kind"] == "checkpoint"
                for e in world.api.get(f"/v1/jobs/{job_id}/events", headers=world.auth).json()[
                    "events"
                ]
            ),
            timeout=120,
            what="a first checkpoint",
        )
        assert first.proc is not None
        os.killpg(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
        target = tmp_path / "planted" / "z.txt"
        s3.create_bucket(Bucket="other-bucket-ck")
        s3.put_object(Bucket="other-bucket-ck", Key="ck/x", Body=b"secret")
        planted = {
            "job_id": job_id,  # the attacker can read its own job id
            "step": 10,
            "uri": "s3://other-bucket-ck/ck/",
            "files": [str(target), "../../../../../../../../tmp/x.safetensors"],
        }
        s3.put_object(
            Bucket=bucket, Key="crash/ft/checkpoints/latest.json", Body=json.dumps(planted)
        )
        world.worker()
        job = world.wait_final(job_id, timeout=120)
        assert job["status"] == "failed", job
        assert "was not written by this job" in job["error"], job["error"]
        assert not target.exists()
        assert not (tmp_path / "planted").exists()
        kinds = [
            e["kind"]
            for e in world.api.get(f"/v1/jobs/{job_id}/events", headers=world.auth).json()["events"]
        ]
        assert "resumed" not in kinds and "registered" not in kinds


class TestOneOutputOneJob:
    def test_two_spellings_of_one_output_cannot_replace_a_jobs_records(
        self,
        api: TestClient,
        auth: dict[str, str],
        s3: Any,
        bucket: str,
        minilm_uri: str,
        worker: Any,
    ) -> None:
        data = put_jsonl(s3, bucket, "two/in.jsonl", _texts(3000))
        first = api.post(
            "/v1/jobs", json=inference_spec(minilm_uri, data, f"s3://{bucket}/same/"), headers=auth
        )
        assert first.status_code == 201, first.text
        one = put_jsonl(s3, bucket, "two/one.jsonl", _texts(1))
        for spelling in (f"s3://{bucket}/./same/", f"s3://{bucket}//same/", f"s3://{bucket}/same"):
            r = api.post("/v1/jobs", json=inference_spec(minilm_uri, one, spelling), headers=auth)
            assert r.status_code == 422, (spelling, r.text)
            assert r.json()["field"] == "output"
        job = wait_job(api, auth, first.json()["id"], timeout=300)
        assert job["status"] == "succeeded", job
        again = api.post(
            "/v1/jobs", json=inference_spec(minilm_uri, one, f"s3://{bucket}/same/"), headers=auth
        )
        assert again.status_code == 422 and again.json()["field"] == "output", again.text
        written = manifest(s3, bucket, "same")
        assert written["job_id"] == first.json()["id"]
        ids = [r["id"] for p in written["parts"] for r in read_jsonl(s3, bucket, p["key"])]
        assert ids == list(range(3000))

    def test_outputs_may_not_overlap_other_outputs_or_active_inputs(
        self, world: World, s3: Any, bucket: str, minilm_uri: str
    ) -> None:
        # No worker runs in this world: the first job stays queued, so it is active.
        data = put_jsonl(s3, bucket, "r2/in/data.jsonl", _texts(5))
        active = world.submit(
            inference_spec(minilm_uri, f"s3://{bucket}/r2/in/", f"s3://{bucket}/r2-out/")
        )
        one = put_jsonl(s3, bucket, "r2/other.jsonl", _texts(1))
        put_jsonl(s3, bucket, "r2-out/early.jsonl", _texts(1))  # readable, but being written
        cases = {
            "inside its errors/": (one, f"s3://{bucket}/r2-out/errors/", "output"),
            "containing its output": (one, f"s3://{bucket}/", "output"),
            "inside its input prefix": (one, f"s3://{bucket}/r2/in/sub/", "output"),
            "equal to its input object": (one, data, "output"),
            "reading its output": (f"s3://{bucket}/r2-out/", f"s3://{bucket}/r3/", "input"),
            "inside its own input": (f"s3://{bucket}/r2/", f"s3://{bucket}/r2/out/", "output"),
        }
        for what, (input_uri, output, field) in cases.items():
            r = world.api.post(
                "/v1/jobs", json=inference_spec(minilm_uri, input_uri, output), headers=world.auth
            )
            assert r.status_code == 422, (what, r.text)
            assert r.json()["field"] == field, (what, r.json())
        # The tenant's own job is named, with its place.
        elsewhere = f"b-{uuid.uuid4().hex[:12]}"
        s3.create_bucket(Bucket=elsewhere)
        far = put_jsonl(s3, elsewhere, "one.jsonl", _texts(1))
        r = world.api.post(
            "/v1/jobs",
            json=inference_spec(minilm_uri, far, f"s3://{bucket}/"),
            headers=world.auth,
        )
        assert r.status_code == 422, r.text
        assert active in r.text and f"s3://{bucket}/r2-out/" in r.text, r.text
        # A neighbour whose name only starts the same is a different place.
        ok = world.api.post(
            "/v1/jobs",
            json=inference_spec(minilm_uri, one, f"s3://{bucket}/r2-out-2/"),
            headers=world.auth,
        )
        assert ok.status_code == 201, ok.text
        assert world.job(active)["status"] == "queued"
        # Another tenant learns that the place is taken, not by which job.
        from tests.conftest import new_key

        other = {"Authorization": f"Bearer {new_key(world.database_url, 'other')}"}
        # An admin gave both tenants a shared prefix: the other tenant's refusal names neither
        # the job nor where that job reads or writes, only what it sent itself.
        for output, theirs in (
            (f"s3://{bucket}/r2-out/x/", ()),
            (f"s3://{bucket}/", ("r2-out", "r2/in")),  # contains the job's output and input
            (f"s3://{bucket}/r2/", ("r2/in",)),  # contains the input of an active job
        ):
            r = world.api.post(
                "/v1/jobs", json=inference_spec(minilm_uri, far, output), headers=other
            )
            assert r.status_code == 422, r.text
            assert active not in r.text and "another tenant's job" in r.text, r.text
            for place in theirs:
                assert place not in r.text, (output, r.text)

    def test_dot_segments_cannot_leave_an_allowed_bucket(
        self, api: TestClient, auth: dict[str, str], minilm_uri: str, bucket: str
    ) -> None:
        for field, uri in (
            ("input", f"s3://{bucket}/../bob/in.jsonl"),
            ("output", f"s3://{bucket}/../bob/out/"),
            ("model", f"s3://{bucket}/../bob/model/"),
        ):
            spec = inference_spec(minilm_uri, f"s3://{bucket}/in.jsonl", f"s3://{bucket}/o/")
            spec[field] = uri
            r = api.post("/v1/jobs", json=spec, headers=auth)
            assert r.status_code == 422, r.text
            assert r.json()["field"] == field
            assert "'..' segment" in r.json()["message"]


class TestLocalBackend:
    """The embedded object store maps s3://bucket/key to a directory: keys must never walk out
    of it, and an unusable key is a 422 naming the field, not a 500."""

    def test_keys_cannot_leave_the_allowed_bucket_or_crash_the_api(
        self, database_url: str, tmp_path: Path
    ) -> None:
        from api.app import create_app
        from barge.settings import Settings
        from tests.conftest import new_key

        root = tmp_path / "objects"
        (root / "bob").mkdir(parents=True)
        (root / "bob" / "in.jsonl").write_text('{"text": "bob\'s private text"}\n')
        (root / "alice").mkdir()
        (root / "alice" / "in.jsonl").write_text('{"text": "alice\'s text"}\n')
        (root / "alice" / "model").mkdir()
        (root / "alice" / "model" / "config.json").write_text("{}")
        settings = Settings(
            database_url=database_url,
            storage_backend="local",
            s3_endpoint_url=None,  # the run's endpoint (in the environment) is not this store's
            local_store_dir=root,
            allowed_buckets=["alice"],
            home=tmp_path / "home",
        )
        auth = {"Authorization": f"Bearer {new_key(database_url, 'local-' + uuid.uuid4().hex)}"}
        with TestClient(create_app(settings), raise_server_exceptions=False) as api:
            cases = [
                ("input", "s3://alice/../bob/in.jsonl", "'..' segment"),
                ("output", "s3://alice/../bob/out/", "'..' segment"),
                ("input", "s3://alice/in\x00.jsonl", "NUL"),
                ("input", "s3://alice/" + "k" * 300 + ".jsonl", "longer than 255 bytes"),
                ("output", "s3://alice/" + "k" * 300 + "/", "longer than 255 bytes"),
                ("output", "s3://bob/out/", "not one Barge may use"),
            ]
            for field, uri, why in cases:
                spec = inference_spec("s3://alice/model/", "s3://alice/in.jsonl", "s3://alice/out/")
                spec[field] = uri
                r = api.post("/v1/jobs", json=spec, headers=auth)
                assert r.status_code == 422, (uri[:40], r.text)
                assert r.json()["field"] == field, r.json()
                assert why in r.json()["message"], r.json()
        assert sorted(p.name for p in root.iterdir()) == ["alice", "bob"]
        assert sorted(p.name for p in (root / "bob").iterdir()) == ["in.jsonl"]


class TestLocalModelPath:
    """A local model path is echoed as it was sent, never as it resolves: ``/proc/self/cwd``
    would answer with the API's or the worker's own directory, and a symlink with where the
    operator keeps the model."""

    def test_refusals_errors_and_bodies_name_the_path_sent(
        self, world: World, s3: Any, bucket: str, short_tmp: Path
    ) -> None:
        from api.app import create_app
        from barge.settings import Settings

        allowed = short_tmp / "allowed"  # short: an error quotes at most 80 characters of it
        kept = allowed / "kept-by-the-operator"
        broken = tiny_classifier(kept / "broken")
        config = json.loads((broken / "config.json").read_text())
        config.pop("model_type")  # loads in no worker: the job fails with the model's name
        config["architectures"] = ["NoSuchModel"]
        (broken / "config.json").write_text(json.dumps(config))
        (allowed / "link").symlink_to(broken, target_is_directory=True)
        (allowed / "dangling").symlink_to(kept / "gone", target_is_directory=True)
        data = put_jsonl(s3, bucket, "local-model/in.jsonl", [{"id": "1", "text": "hello"}])
        dirs = json.dumps([str(allowed)])
        world.worker(BARGE_LOCAL_MODEL_DIRS=dirs)
        local = Settings(  # the world's API, allowing the directory (lists are JSON)
            **{
                k[6:].lower(): json.loads(v) if v.startswith("[") else v
                for k, v in {**world.env, "BARGE_LOCAL_MODEL_DIRS": dirs}.items()
                if k.startswith("BARGE_")
            }
        )
        auth = world.auth
        with TestClient(create_app(local), raise_server_exceptions=False) as api:

            def submit(model: str, out: str) -> Any:
                spec = inference_spec(model, data, f"s3://{bucket}/local-model/{out}/")
                return api.post("/v1/jobs", json={**spec, "task": "classify"}, headers=auth)

            for sent in ("/proc/self/cwd/models/m", f"{allowed}/dangling"):
                r = submit(sent, "refused")
                assert r.status_code == 422, r.text
                assert r.json()["field"] == "model" and sent in r.json()["message"], r.text
                for private in (os.getcwd(), str(kept)):
                    assert private not in r.text, r.text
            sent = f"{allowed}/link"
            r = submit(sent, "runs")
            assert r.status_code == 201, r.text
            job = wait_job(api, auth, r.json()["id"])
            shown = json.dumps(job) + json.dumps(
                api.get(f"/v1/jobs/{job['id']}/events", headers=auth).json()
            )
            assert job["status"] == "failed" and sent in job["error"], job["error"]
            assert str(kept) not in shown and os.getcwd() not in shown, shown
