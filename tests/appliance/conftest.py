from __future__ import annotations

import pytest

from appliance import audit
from appliance.store import Store


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "pec.db")
    audit.bind(s)
    yield s
    audit.bind(None)
    s.close()
