"""Thin HTTP handlers, one module per area: each maps a request onto a service call and what
the service returns onto a response of ``api.schemas``; the rules live in ``services``.

- ``jobs``: ``/v1/jobs`` (submit, list, get, cancel, events, shards);
- ``drops``: ``/v1/drops``, drop-folder rules;
- ``models``: ``/v1/models``, the model registry;
- ``webhooks``: ``/v1/webhooks``, webhook endpoints and their deliveries;
- ``admin``: ``/v1/admin`` (tenants, scopes, quotas, keys) and ``/v1/audit``, for admin keys;
- ``health``: ``/healthz``;
- ``metrics``: ``/metrics``, Prometheus text, computed at most every few seconds;
- ``openai``: the OpenAI-compatible surface at ``/openai/v1``, an app of its own.
"""
