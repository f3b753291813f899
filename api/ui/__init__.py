"""The console at ``/ui/``: server-rendered pages served by the API's process, with every asset
shipped in the package (``static/``: uPlot and htmx, vendored; see its VENDORED.md) so it works
offline.

- ``app``: the console's app, mounted at ``/ui``: static assets, HTML error pages, the
  headers every answer carries (a strict Content Security Policy);
- ``session``: the signed session cookie (the key's id, never the key) and its CSRF token;
- ``auth``: signing in and out, who a request acts as (the key re-checked on every request),
  the CSRF check of state-changing forms;
- ``pages``: the pages (jobs, a job, workers, models; tenants and the audit log for admins),
  the JSON a job page polls, cancel and retry;
- ``render``: the Jinja2 templates (``templates/``) and their filters.

Imports ``api.deps``, ``services``, ``db`` and ``barge``, like the rest of ``api``.
"""
