"""Attack tests share the fault tests' separate world (own database, vhost, scheduler)."""

from tests.faults.conftest import world  # noqa: F401 (a fixture)
