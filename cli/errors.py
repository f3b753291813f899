"""The error a ``barge`` command raises for a mistake in what the user gave it (a spec file that
cannot be read or parsed, an id that matches no job): ``cli.main`` prints it as
``barge: <message>`` and exits 2, never with a traceback.

Imports: nothing of ours.
"""

from __future__ import annotations


class CliError(Exception):
    """What is wrong and where, in words for the person at the terminal."""
