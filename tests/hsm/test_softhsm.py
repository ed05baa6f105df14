import os
import subprocess

import pytest

from hsm import HsmError, create_softhsm_token, softhsm_config
from tests.hsm.conftest import SO_PIN, USER_PIN


def test_token_is_created_under_the_directory(tmp_path, token):
    assert token == softhsm_config(tmp_path / "hsm")
    assert (tmp_path / "hsm" / "tokens").is_dir()
    assert any((tmp_path / "hsm" / "tokens").iterdir())
    out = subprocess.run(["softhsm2-util", "--show-slots"], capture_output=True, text=True,
                         env=dict(os.environ, SOFTHSM2_CONF=str(token))).stdout
    assert "Label:            pec" in out


def test_pins_are_not_on_disk(tmp_path, token):
    for path in (tmp_path / "hsm").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert USER_PIN.encode() not in data and SO_PIN.encode() not in data


def test_duplicate_label_refused(tmp_path, token):
    with pytest.raises(HsmError, match="already exists"):
        create_softhsm_token(tmp_path / "hsm", "pec", SO_PIN, USER_PIN)


@pytest.mark.parametrize("label,so,user,match", [
    ("", SO_PIN, USER_PIN, "label"),
    ("x" * 33, SO_PIN, USER_PIN, "label"),
    ("pec", "123", USER_PIN, "SO PIN"),
    ("pec", SO_PIN, "a\nb", "user PIN"),
])
def test_bad_arguments(tmp_path, label, so, user, match):
    with pytest.raises(ValueError, match=match):
        create_softhsm_token(tmp_path / "hsm", label, so, user)
    assert not (tmp_path / "hsm").exists()
