"""Quotas as values: an admin's overrides checked, the effective limits of a tenant, the first
limit a plan exceeds. (At submit and at planning, on the real stack: tests/faults/test_quotas.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from barge.errors import InvalidSpec, QuotaExceeded
from barge.settings import Settings
from db.models import Tenant
from services import quotas

SETTINGS = Settings(env="test", quota_max_active_jobs=7, quota_min_checkpoint_seconds=20)


class TestCheckOverrides:
    def test_known_limits_are_validated_and_read_from_text(self) -> None:
        checked = quotas.check_overrides(
            {"max_active_jobs": "5", "min_checkpoint_seconds": 2, "max_finetune_steps": None}
        )
        assert checked == {
            "max_active_jobs": 5,
            "min_checkpoint_seconds": 2.0,
            "max_finetune_steps": None,  # back to the default
        }

    @pytest.mark.parametrize(
        ("overrides", "field", "says"),
        [
            ({"max_jobs": 3}, "quotas", "unknown quota 'max_jobs'; quotas are max_active_jobs"),
            ({"max_active_jobs": 0}, "quotas.max_active_jobs", "greater than or equal to 1"),
            ({"max_active_jobs": 2.5}, "quotas.max_active_jobs", "fractional part"),
            ({"max_active_jobs": True}, "quotas.max_active_jobs", "must be a number"),
            ({"max_shards_per_job": "many"}, "quotas.max_shards_per_job", "valid integer"),
            ({"min_checkpoint_seconds": 1e-300}, "quotas.min_checkpoint_seconds", "than or equal"),
            ({"min_checkpoint_seconds": float("nan")}, "quotas.min_checkpoint_seconds", "nan"),
            ({"max_records_per_job": 10**20}, "quotas.max_records_per_job", "less than"),
        ],
    )
    def test_refusals_name_the_limit_to_fix(
        self, overrides: dict[str, object], field: str, says: str
    ) -> None:
        with pytest.raises(InvalidSpec) as exc:
            quotas.check_overrides(overrides)
        assert exc.value.field == field
        assert says in exc.value.message
        assert exc.value.status_code == 422

    def test_not_an_object_is_refused(self) -> None:
        with pytest.raises(InvalidSpec, match="quotas must be an object"):
            quotas.check_overrides(["max_active_jobs", 3])  # type: ignore[arg-type]


class TestEffective:
    def test_the_settings_are_every_tenants_defaults(self) -> None:
        limits = quotas.effective(Tenant(name="t", quotas={}), SETTINGS)
        assert limits.max_active_jobs == 7
        assert limits.min_checkpoint_seconds == 20
        assert limits.max_shards_per_job == Settings().quota_max_shards_per_job

    def test_a_tenants_overrides_win_limit_by_limit(self) -> None:
        tenant = Tenant(name="t", quotas={"max_active_jobs": 2, "max_finetune_steps": None})
        limits = quotas.effective(tenant, SETTINGS)
        assert (limits.max_active_jobs, limits.min_checkpoint_seconds) == (2, 20)
        assert limits.max_finetune_steps == SETTINGS.quota_max_finetune_steps

    def test_a_stored_override_that_is_not_valid_leaves_the_default(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        tenant = Tenant(name="t", quotas={"max_active_jobs": -1, "unknown": 3})
        assert quotas.effective(tenant, SETTINGS).max_active_jobs == 7
        assert "stored quota max_active_jobs" in caplog.text


class TestPlanOverrun:
    limits = quotas.Quotas(
        max_active_jobs=1,
        max_shards_per_job=10,
        max_records_per_job=100,
        max_finetune_steps=50,
        min_checkpoint_seconds=1,
        max_openai_files=1,
        max_openai_storage_bytes=1,
        max_model_versions=1,
    )

    @pytest.mark.parametrize(
        ("sizes", "quota", "message"),
        [
            ({"shards": 11, "records": 100}, "max_shards_per_job", "has 11 shards, over this"),
            ({"shards": 10, "records": 101}, "max_records_per_job", "has 101 records"),
            ({"shards": 1, "records": 5, "steps": 51}, "max_finetune_steps", "51 optimizer"),
        ],
    )
    def test_the_first_limit_exceeded_is_named_with_its_value(
        self, sizes: dict[str, Any], quota: str, message: str
    ) -> None:
        over = quotas.plan_overrun(self.limits, **sizes)
        assert over is not None and over.quota == quota
        assert message in over.message and quota in over.message

    def test_a_plan_at_the_limits_passes(self) -> None:
        assert quotas.plan_overrun(self.limits, shards=10, records=100, steps=50) is None


def test_quota_exceeded_is_a_429_with_retry_after() -> None:
    exc = QuotaExceeded("over", retry_after=30, quota="max_active_jobs")
    assert exc.status_code == 429
    assert exc.headers == {"Retry-After": "30"}
    assert exc.to_body() == {
        "error": "quota_exceeded",
        "message": "over",
        "detail": {"quota": "max_active_jobs"},
    }


def test_a_holding_quota_tells_clients_not_to_retry() -> None:
    exc = quotas.HoldingExceeded("full", field="file", quota="max_openai_files", limit=2)
    assert exc.status_code == 429 and exc.code == "quota_exceeded"
    assert exc.headers == {"Retry-After": "30", "x-should-retry": "false"}
    assert exc.to_body()["detail"] == {"quota": "max_openai_files", "limit": 2}


def test_holding_quotas_have_defaults_and_overrides() -> None:
    limits = quotas.effective(Tenant(name="t", quotas={"max_model_versions": 3}), SETTINGS)
    assert limits.max_model_versions == 3
    assert limits.max_openai_files == SETTINGS.quota_max_openai_files
    assert limits.max_openai_storage_bytes == SETTINGS.quota_max_openai_storage_bytes
    checked = quotas.check_overrides({"max_openai_storage_bytes": "1000000", "max_openai_files": 5})
    assert checked == {"max_openai_storage_bytes": 1_000_000, "max_openai_files": 5}
