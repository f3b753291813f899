"""The HTTP boundary (FastAPI): the app factory (``app``), the request guard (``guard``), error
bodies (``errors``), request dependencies and the unit of work per request (``deps``), the HTTP
shapes (``schemas``: request and response bodies, one module per area, with the error responses
each call documents), thin routers (``routers``), the OpenAPI additions (``openapi``), the docs
pages served from local assets (``docs``), the web console at ``/ui/`` (``ui``) and the
waits of ``GET /v1/jobs/{id}?wait=`` (``waits``).

Imports ``services``, ``db`` and ``barge``; never ``worker``, ``cli`` or torch (it sends tasks by
name, after the commit).
"""
