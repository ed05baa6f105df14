from __future__ import annotations

import pytest

from appliance.state.store import Store
from appliance.trust import audit
from tests.appliance import fakehost
from tests.appliance.daemon_proc import Daemon, swtpm_pid


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "pec.db")
    audit.bind(s)
    yield s
    audit.bind(None)
    s.close()


@pytest.fixture
def daemon(tmp_path):
    """A real daemon on a Mini fake host with a fresh state directory (SoftHSM2, swtpm)."""
    d = Daemon(tmp_path / "state", fakehost.mini().build(tmp_path / "root"))
    d.init()
    d.start()
    yield d
    d.stop_now()
    assert swtpm_pid(d.state_dir) is None, "swtpm left running"
