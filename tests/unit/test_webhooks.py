"""Webhooks without services: signatures the official ``openai`` client verifies (one secret,
and both while a rotated secret's grace lasts), which addresses a target may resolve to, the
back-off, and the settings' checks. (On real processes: tests/e2e/test_webhooks.py and
tests/faults/test_webhook_faults.py.)"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import openai
import pytest
from pydantic import ValidationError

from barge.settings import Settings
from db.base import utcnow
from db.models import WebhookEndpoint
from services import webhooks

BODY = json.dumps(
    {
        "id": "evt_1",
        "object": "event",
        "type": "batch.completed",
        "created_at": 1,
        "data": {"id": "batch_1"},
    },
    separators=(",", ":"),
)


def headers(signature: str, webhook_id: str = "wh_1") -> dict[str, str]:
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(time.time())),
        "webhook-signature": signature,
    }


def unwrap(body: str, hdrs: dict[str, str], secret: str) -> object:
    client = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/")
    return client.webhooks.unwrap(body, hdrs, secret=secret)


class TestSignatures:
    def test_openai_verifies_a_signed_delivery(self) -> None:
        secret = webhooks.new_secret()
        assert secret.startswith("whsec_")
        hdrs = headers("")
        hdrs["webhook-signature"] = webhooks.sign(
            secret, "wh_1", int(hdrs["webhook-timestamp"]), BODY
        )
        event = unwrap(BODY, hdrs, secret)
        assert (event.type, event.data.id) == ("batch.completed", "batch_1")  # type: ignore[attr-defined]

    def test_another_secret_or_body_is_refused(self) -> None:
        secret, other = webhooks.new_secret(), webhooks.new_secret()
        hdrs = headers("")
        hdrs["webhook-signature"] = webhooks.sign(
            secret, "wh_1", int(hdrs["webhook-timestamp"]), BODY
        )
        with pytest.raises(openai.InvalidWebhookSignatureError):
            unwrap(BODY, hdrs, other)
        with pytest.raises(openai.InvalidWebhookSignatureError):
            unwrap(BODY.replace("batch_1", "batch_2"), hdrs, secret)

    def test_both_secrets_sign_while_the_grace_lasts(self) -> None:
        old, new = webhooks.new_secret(), webhooks.new_secret()
        endpoint = WebhookEndpoint(
            secret=new, previous_secret=old, previous_secret_until=utcnow() + timedelta(hours=1)
        )
        used = webhooks.secrets_in_use(endpoint)
        assert used == (new, old)
        hdrs = headers("")
        hdrs["webhook-signature"] = webhooks.signature_header(
            used, "wh_1", int(hdrs["webhook-timestamp"]), BODY
        )
        for secret in (new, old):
            unwrap(BODY, hdrs, secret)
        endpoint.previous_secret_until = utcnow() - timedelta(seconds=1)
        assert webhooks.secrets_in_use(endpoint) == (new,)


DEFAULT = Settings()


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.9.9.9",
        "::1",
        "169.254.169.254",  # cloud metadata
        "fd00:ec2::254",  # AWS metadata over IPv6
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",  # shared (carrier-grade NAT)
        "0.0.0.0",
        "224.0.0.1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "fe80::1%eth0",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert webhooks.address_problem(address, DEFAULT) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700:4700::1111", "8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert webhooks.address_problem(address, DEFAULT) is None


def test_an_allowed_network_opens_only_itself() -> None:
    settings = Settings(webhook_allowed_networks=["127.0.0.0/8"])
    assert webhooks.address_problem("127.0.0.1", settings) is None
    assert webhooks.address_problem("::ffff:127.0.0.1", settings) is None
    assert webhooks.address_problem("169.254.169.254", settings) is not None
    assert webhooks.address_problem("::1", settings) is not None


@pytest.mark.parametrize(
    "url",
    ["http://localhost:8080/x", "http://127.0.0.1/x", "http://[::1]/x", "http://169.254.169.254/"],
)
def test_check_target_refuses_after_resolving_naming_the_field(url: str) -> None:
    with pytest.raises(webhooks.TargetRefused) as refused:
        webhooks.check_target(url, DEFAULT, field="url")
    assert refused.value.field == "url" and refused.value.status_code == 422


def test_check_target_keeps_the_addresses_it_checked() -> None:
    target = webhooks.check_target("https://93.184.216.34:8443/hooks?x=1", DEFAULT)
    assert (target.host, target.port, target.addresses) == (
        "93.184.216.34",
        8443,
        ("93.184.216.34",),
    )


def test_backoff_doubles_up_to_its_cap_and_gives_up_after_the_window() -> None:
    settings = Settings(webhook_retry_base_seconds=30, webhook_retry_max_seconds=3600)
    seconds = [webhooks.backoff(settings, n).total_seconds() for n in range(1, 10)]
    assert seconds == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    start = utcnow()
    assert not webhooks.gives_up(settings, start, start + timedelta(hours=23))
    assert webhooks.gives_up(settings, start, start + timedelta(hours=24, seconds=1))


def test_settings_refuse_a_network_that_is_none() -> None:
    with pytest.raises(ValidationError, match="BARGE_WEBHOOK_ALLOWED_NETWORKS"):
        Settings(webhook_allowed_networks=["10.0.0.0/33"])
    with pytest.raises(ValidationError, match="BARGE_WEBHOOK_RETRY_BASE_SECONDS"):
        Settings(webhook_retry_base_seconds=10, webhook_retry_max_seconds=5)
