"""The ``barge`` command, the top of the layers (``cli → api | worker → services → db → barge``).

- ``main``: the argument parser and the dispatch to a command;
- ``processes``: running api, worker, scheduler and Flower, and the embedded stack (``up``);
- ``admin``: ``db upgrade``, ``keys``, ``tenants`` and ``audit``, the only commands that open
  the database (as the local operator);
- ``commands``: the client commands (submit, status, list, ..., top), over HTTP;
- ``results``: ``results`` and ``errors``, a job's files read through the API;
- ``login`` and ``profiles``: ``login``, ``logout``, ``config``, and where a client command
  finds the API and its key (flags, environment, saved profile, defaults);
- ``output``: ``-o json|yaml|wide|name`` and ``-q``, one helper for every list and get;
- ``errors``: the command's errors and the one map from error to exit status;
- ``render``: how jobs, shards, events and tables are shown;
- ``tables``: tables and live views through rich, boxed on a terminal and plain lines elsewhere;
- ``live``: what keeps the live view stoppable (signals, waits, writes to a pipe);
- ``client``: the HTTP client of the API;
- ``errors``: the error a command raises for a mistake in its input (``barge: ...``, exit 2);
- ``demo``: ``barge demo`` (what ``make demo`` runs).

Processes are started by module name (``api.app``, ``worker.celery_app``): the CLI never imports
the API or the worker itself.
"""
