import pytest

from tee import features


def _root(tmp_path, flags="fpu vme sse2", devices=()):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text(
        f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    for dev in devices:
        path = tmp_path / dev
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    return tmp_path


def test_plain_host(tmp_path):
    assert features(_root(tmp_path)) == {"sgx": False, "sev_snp": False, "tdx": False}


@pytest.mark.parametrize("flags,devices,expected", [
    ("fpu sgx sgx_lc", (), "sgx"),
    ("fpu", ("dev/sgx_enclave",), "sgx"),
    ("fpu sev sev_es sev_snp", (), "sev_snp"),
    ("fpu", ("dev/sev-guest",), "sev_snp"),
    ("fpu tdx_guest", (), "tdx"),
    ("fpu", ("dev/tdx_guest",), "tdx"),
])
def test_each_tee(tmp_path, flags, devices, expected):
    found = features(_root(tmp_path, flags, devices))
    assert [k for k, v in found.items() if v] == [expected]


def test_sev_without_snp_is_not_snp(tmp_path):
    assert features(_root(tmp_path, "fpu sev sev_es"))["sev_snp"] is False


def test_missing_proc_is_no_tee(tmp_path):
    assert features(tmp_path) == {"sgx": False, "sev_snp": False, "tdx": False}
