import pytest

from tee import Swtpm, Tpm


@pytest.fixture
def swtpm(tmp_path):
    with Swtpm(tmp_path / "tpm") as sim:
        yield sim


@pytest.fixture
def tpm(swtpm):
    with Tpm(swtpm.tcti) as t:
        yield t
