"""The HTTP client of the Barge API, used by the client commands, ``up`` and the demo.

Every failure is an ``ApiError``: the status the API answered (4xx, 5xx), or ``Unreachable``
when it did not answer at all (``cli.errors`` maps each to its exit status).

Imports: httpx, ``cli.errors``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx

from cli.errors import ApiError, Unreachable

__all__ = ["ApiError", "Client", "Unreachable"]


class Client:
    def __init__(self, url: str | None = None, key: str | None = None, timeout: float = 30.0):
        self.url = (url or os.environ.get("BARGE_API_URL") or "http://127.0.0.1:8000").rstrip("/")
        self.key = key if key is not None else os.environ.get("BARGE_API_KEY", "")
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise Unreachable(self.url, f"no answer within {self.timeout:g} s") from None
        except httpx.TransportError as exc:
            raise Unreachable(self.url, str(exc) or type(exc).__name__) from None
        return _answer(response)

    @contextlib.contextmanager
    def _stream(self, path: str) -> Iterator[Iterator[bytes]]:
        """The body of a GET as it arrives, in chunks; the same errors as ``_call``."""
        try:
            with self._http.stream("GET", path) as response:
                if response.status_code >= 400:
                    response.read()
                    _answer(response)
                yield response.iter_bytes()
        except httpx.TimeoutException:
            raise Unreachable(self.url, f"no answer within {self.timeout:g} s") from None
        except httpx.TransportError as exc:
            raise Unreachable(self.url, str(exc) or type(exc).__name__) from None

    def submit(self, spec: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("POST", "/v1/jobs", json=spec, headers=headers)  # type: ignore[no-any-return]

    def dry_run(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/v1/jobs", json=spec, params={"dry_run": "true"})  # type: ignore[no-any-return]

    def job(self, job_id: str, wait: float = 0) -> dict[str, Any]:
        """The job; with ``wait``, as soon as it is final or after ``wait`` seconds."""
        params = {"wait": f"{wait:g}"} if wait else None
        return self._call("GET", f"/v1/jobs/{job_id}", params=params)  # type: ignore[no-any-return]

    def jobs(self, **params: Any) -> dict[str, Any]:
        params = {k: v for k, v in params.items() if v is not None}
        return self._call("GET", "/v1/jobs", params=params)  # type: ignore[no-any-return]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/jobs/{job_id}/cancel")  # type: ignore[no-any-return]

    def retry(self, job_id: str, overrides: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", f"/v1/jobs/{job_id}/retry", json=overrides)  # type: ignore[no-any-return]

    def pause(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/jobs/{job_id}/pause")  # type: ignore[no-any-return]

    def resume(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/jobs/{job_id}/resume")  # type: ignore[no-any-return]

    def events(self, job_id: str, after: int = 0) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}/events", params={"after": after})  # type: ignore[no-any-return]

    def shards(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}/shards")  # type: ignore[no-any-return]

    def files(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}/files")  # type: ignore[no-any-return]

    def file(self, job_id: str, name: str) -> contextlib.AbstractContextManager[Iterator[bytes]]:
        """One file of a job (a name ``files`` lists), streamed: ``with client.file(...) as
        chunks``."""
        return self._stream(f"/v1/jobs/{job_id}/files/{quote(name, safe='/')}")

    def add_drop(self, name: str, prefix: str, template: dict[str, Any]) -> dict[str, Any]:
        body = {"name": name, "prefix": prefix, "template": template}
        return self._call("POST", "/v1/drops", json=body)  # type: ignore[no-any-return]

    def drops(self) -> dict[str, Any]:
        return self._call("GET", "/v1/drops")  # type: ignore[no-any-return]

    def remove_drop(self, name: str) -> None:
        self._call("DELETE", f"/v1/drops/{name}")

    def create_webhook(self, url: str, events: list[str]) -> dict[str, Any]:
        body = {"url": url, "events": events}
        return self._call("POST", "/v1/webhooks", json=body)  # type: ignore[no-any-return]

    def webhooks(self) -> dict[str, Any]:
        return self._call("GET", "/v1/webhooks")  # type: ignore[no-any-return]

    def delete_webhook(self, webhook_id: str) -> None:
        self._call("DELETE", f"/v1/webhooks/{quote(webhook_id, safe='')}")

    def rotate_webhook(self, webhook_id: str) -> dict[str, Any]:
        path = f"/v1/webhooks/{quote(webhook_id, safe='')}/rotate"
        return self._call("POST", path)  # type: ignore[no-any-return]

    def webhook_deliveries(self, webhook_id: str, limit: int) -> dict[str, Any]:
        path = f"/v1/webhooks/{quote(webhook_id, safe='')}/deliveries"
        return self._call("GET", path, params={"limit": limit})  # type: ignore[no-any-return]

    def register_model(self, name: str, uri: str, task: str) -> dict[str, Any]:
        body = {"name": name, "uri": uri, "task": task}
        return self._call("POST", "/v1/models", json=body)  # type: ignore[no-any-return]

    def models(self, name: str | None = None) -> dict[str, Any]:
        return self._call("GET", f"/v1/models/{name}" if name else "/v1/models")  # type: ignore[no-any-return]

    def health(self) -> dict[str, Any]:
        try:
            return self._call("GET", "/healthz")  # type: ignore[no-any-return]
        except ApiError as exc:
            if exc.status == 503 and isinstance(exc.body, dict):
                return exc.body
            raise


def _answer(response: httpx.Response) -> Any:
    """The decoded body of a response; ApiError for an error status."""
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if response.status_code >= 400:
        raise ApiError(response.status_code, body)
    return body
