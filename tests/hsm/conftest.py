import pytest

from hsm import SOFTHSM2_MODULE, DirBlobStore, Keystore, create_softhsm_token

USER_PIN = "user-pin-1234"
SO_PIN = "so-pin-5678"


@pytest.fixture
def token(tmp_path):
    """A fresh SoftHSM2 token 'pec' under a temporary directory; returns its config path."""
    return create_softhsm_token(tmp_path / "hsm", "pec", SO_PIN, USER_PIN)


@pytest.fixture
def blob_store(tmp_path):
    return DirBlobStore(tmp_path / "keys")


@pytest.fixture
def keystore(token, blob_store):
    ks = Keystore.open(SOFTHSM2_MODULE, "pec", USER_PIN, config=token, blob_store=blob_store,
                       create_keys=True)
    yield ks
    ks.close()
