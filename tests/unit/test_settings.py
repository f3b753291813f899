"""Settings that contradict each other are refused at start, naming both; an S3 endpoint means
the S3 backend."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from barge.settings import Settings


@pytest.fixture(autouse=True)
def _no_barge_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test passes counts (a test run's own BARGE_* environment does not)."""
    import os

    for name in list(os.environ):
        if name.startswith("BARGE_"):
            monkeypatch.delenv(name)


class TestStorageBackend:
    def test_nothing_set_is_the_local_store(self) -> None:
        assert Settings().storage_backend == "local"

    def test_an_endpoint_with_the_backend_left_at_its_default_means_s3(self) -> None:
        settings = Settings(s3_endpoint_url="http://minio:9000")
        assert settings.storage_backend == "s3"

    def test_an_endpoint_from_the_environment_means_s3(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("BARGE_S3_ENDPOINT_URL", "http://minio:9000")
        assert Settings().storage_backend == "s3"

    def test_an_endpoint_with_an_explicit_local_backend_is_refused_naming_both(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("BARGE_S3_ENDPOINT_URL", "http://minio:9000")
        monkeypatch.setenv("BARGE_STORAGE_BACKEND", "local")
        with pytest.raises(ValidationError) as caught:
            Settings()
        message = str(caught.value)
        assert "BARGE_S3_ENDPOINT_URL" in message and "BARGE_STORAGE_BACKEND=local" in message

    def test_an_empty_endpoint_is_not_set(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("BARGE_S3_ENDPOINT_URL", "")
        settings = Settings()
        assert settings.s3_endpoint_url is None and settings.storage_backend == "local"

    def test_an_endpoint_that_is_not_a_url_is_refused(self) -> None:
        with pytest.raises(ValidationError, match="BARGE_S3_ENDPOINT_URL must be an http"):
            Settings(s3_endpoint_url="minio:9000")

    def test_a_local_store_directory_with_the_s3_backend_is_refused_naming_both(
        self, tmp_path: object
    ) -> None:
        with pytest.raises(ValidationError) as caught:
            Settings(storage_backend="s3", local_store_dir=tmp_path)
        message = str(caught.value)
        assert "BARGE_LOCAL_STORE_DIR" in message and "BARGE_STORAGE_BACKEND=s3" in message

    def test_s3_without_an_endpoint_is_aws(self) -> None:
        settings = Settings(storage_backend="s3")
        assert settings.storage_backend == "s3" and settings.s3_endpoint_url is None

    def test_prod_with_an_endpoint_and_servers_needs_no_backend_setting(self) -> None:
        settings = Settings(
            env="prod",
            database_url="postgresql+psycopg://u:p@db/barge",
            broker_url="amqp://u:p@mq//",
            s3_endpoint_url="http://minio:9000",
        )
        assert settings.storage_backend == "s3"


class TestDevice:
    def test_a_device_map_with_the_cpu_device_is_refused_naming_both(self) -> None:
        with pytest.raises(ValidationError) as caught:
            Settings(device="cpu", device_map="auto")
        message = str(caught.value)
        assert "BARGE_DEVICE_MAP=auto" in message and "BARGE_DEVICE=cpu" in message

    def test_a_device_map_with_cuda_or_the_default_device_is_fine(self) -> None:
        assert Settings(device_map="auto").device_map == "auto"
        assert Settings(device="cuda", device_map="balanced").device_map == "balanced"


class TestWorkerMetrics:
    def test_a_host_without_a_port_is_refused_naming_both(self) -> None:
        with pytest.raises(ValidationError) as caught:
            Settings(worker_metrics_host="0.0.0.0")
        message = str(caught.value)
        assert "BARGE_WORKER_METRICS_HOST" in message and "BARGE_WORKER_METRICS_PORT" in message

    def test_a_host_with_a_port_is_accepted(self) -> None:
        settings = Settings(worker_metrics_host="0.0.0.0", worker_metrics_port=9101)
        assert settings.worker_metrics_port == 9101

    def test_the_default_host_without_a_port_is_fine(self) -> None:
        assert Settings().worker_metrics_port == 0
