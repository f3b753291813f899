"""Barge's shared package: settings, job specs, storage URIs, record formats and queue names.

Both ``api`` and ``worker`` import it; it imports neither of them.
"""

__version__ = "0.1.0"
