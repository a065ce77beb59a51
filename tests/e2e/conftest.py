"""End-to-end tests run against the real local control plane (never a mock).

Their fixtures (``control_plane``, ``admin``, ``namespace``, ``agent_rbac``, ``make_pod``,
``start_agent``) live in ``tests/conftest.py``: the fault tests in ``tests/faults`` share them, and
with them the session's one control plane.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)
