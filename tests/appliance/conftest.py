from __future__ import annotations

import pytest

from appliance.state.store import Store
from appliance.trust import audit


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "pec.db")
    audit.bind(s)
    yield s
    audit.bind(None)
    s.close()
