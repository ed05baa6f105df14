from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from appliance.host.inventory import detect
from appliance.host.profile import (
    ProfileError,
    TomlFileError,
    default_profiles_dir,
    load_profile,
    load_profiles,
    match,
)
from tests.appliance import fakehost
from tests.appliance.fakehost import GIB, TB, FakeHost


def classify(tmp_path: Path, host: FakeHost, **kw):
    return match(detect(host.build(tmp_path / "root"), survey=False), **kw)


def crit(result, name):
    return next(c for c in result.criteria if c.name == name)


def test_shipped_profiles_load_in_rank_order():
    assert [p.name for p in load_profiles()] == ["mini", "standard", "jumbo"]
    assert (default_profiles_dir() / "mini.toml").is_file()


@pytest.mark.parametrize(
    ("host", "profile", "capabilities", "policy"),
    [
        (fakehost.mini, "mini", ["mpc"], "cpu-only"),
        (fakehost.standard, "standard", ["mpc", "fl", "ledger"], "fastest-healthy"),
        (fakehost.jumbo, "jumbo", ["mpc", "tee", "fl", "ledger"], "fastest-healthy"),
        (fakehost.small, "unclassified", [], "cpu-only"),
    ],
)
def test_each_profile(tmp_path, host, profile, capabilities, policy):
    result = classify(tmp_path, host())
    assert result.profile == profile
    assert result.capabilities == capabilities
    assert result.router_policy == policy
    if profile == "unclassified":
        assert not all(c.met for c in result.criteria)  # explains what Mini misses
    else:
        assert all(c.met for c in result.criteria)
    assert {c.name for c in result.criteria} >= {"cores", "memory", "disk", "network"}


def test_memory_just_under_nominal_still_meets(tmp_path):
    # a 16 GB box reports about 15.5 GiB once the kernel took its share
    assert classify(tmp_path, FakeHost(memory_bytes=int(15.3 * GIB))).profile == "mini"


def test_memory_clearly_under_misses_with_explanation(tmp_path):
    result = classify(tmp_path, FakeHost(memory_bytes=int(14.5 * GIB)))
    assert result.profile == "unclassified"
    memory = crit(result, "memory")
    assert not memory.met
    assert "14.5 GiB" in memory.found and "16 GB" in memory.required


def test_decimal_disk_sizes(tmp_path):
    # a 4 TB disk is 3.64 TiB: it meets Mini; 3.5 TB does not
    assert classify(tmp_path / "a", FakeHost(disks={"sda1x": 4 * TB})).profile == "mini"
    result = classify(tmp_path / "b", FakeHost(disks={"nvme0n1": int(3.5 * TB)}))
    assert result.profile == "unclassified" and not crit(result, "disk").met


def test_down_nic_with_a_verified_twin_still_counts(tmp_path):
    host = FakeHost(nics={"eno1": (1000, "up"), "eno2": ("unreadable", "down")})
    result = classify(tmp_path, host)
    assert result.profile == "mini"
    assert "eno2 down, speed unknown" in crit(result, "network").found


def test_all_nics_down_misses_network(tmp_path):
    host = FakeHost(nics={"eno1": (None, "down"), "eno2": (None, "down")})
    result = classify(tmp_path, host)
    assert result.profile == "unclassified"
    assert not crit(result, "network").met


def test_jumbo_needs_10gbe(tmp_path):
    host = fakehost.jumbo(nics={"eno1": (1000, "up"), "eno2": (1000, "up")})
    result = classify(tmp_path, host)
    assert result.profile == "standard"
    jumbo = next(c for c in result.considered if c["profile"] == "jumbo")
    assert [c["name"] for c in jumbo["criteria"] if not c["met"]] == ["network"]


def test_hygon_chipset_without_dcu_is_not_jumbo(tmp_path):
    host = fakehost.jumbo(pci={"0000:00:00.0": fakehost.HYGON_HOST_BRIDGE,
                               "0000:00:14.0": fakehost.HYGON_SMBUS})
    result = classify(tmp_path, host)
    assert result.profile == "standard"
    jumbo = next(c for c in result.considered if c["profile"] == "jumbo")
    missed = [c for c in jumbo["criteria"] if not c["met"]]
    assert [c["name"] for c in missed] == ["accelerator"] and missed[0]["found"] == "none"


def test_jumbo_with_gpu_instead_of_dcu(tmp_path):
    host = fakehost.jumbo(pci={"0000:81:00.0": fakehost.NVIDIA_H100})
    assert classify(tmp_path, host).profile == "jumbo"


def test_jumbo_without_tee_hardware_turns_tee_off(tmp_path):
    host = fakehost.jumbo(flags=("fpu", "avx2"), devices=("/dev/tpmrm0",))
    result = classify(tmp_path, host)
    assert result.profile == "jumbo"
    assert "tee" not in result.capabilities
    assert any("tee" in note for note in result.notes)


def test_mini_capability_choice(tmp_path):
    assert classify(tmp_path, fakehost.mini(), choice="fl").capabilities == ["fl"]
    with pytest.raises(ProfileError, match="one of mpc, fl"):
        classify(tmp_path, fakehost.mini(), choice="ledger")


def test_override(tmp_path):
    result = classify(tmp_path, fakehost.small(),
                      override={"profile": "standard", "by": "admin", "at": "now"})
    assert result.profile == "standard"
    assert result.capabilities == ["mpc", "fl", "ledger"]
    assert result.override["by"] == "admin"
    assert not all(c.met for c in result.criteria)  # the real criteria are still shown
    down = classify(tmp_path, fakehost.jumbo(), override={"profile": "unclassified"})
    assert (down.profile, down.capabilities) == ("unclassified", [])
    with pytest.raises(ProfileError, match="unknown profile"):
        classify(tmp_path, fakehost.mini(), override={"profile": "huge"})


# malformed profile files ------------------------------------------------------------------

def broken_copy(tmp_path: Path, name: str, old: str, new: str) -> Path:
    directory = tmp_path / "profiles"
    shutil.copytree(default_profiles_dir(), directory)
    path = directory / name
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return path


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_wrong_type_names_file_line_and_key(tmp_path):
    path = broken_copy(tmp_path, "standard.toml", "cores = 24", 'cores = "many"')
    with pytest.raises(TomlFileError) as err:
        load_profiles(path.parent)
    message = str(err.value)
    assert f"{path}:{line_of(path, 'cores =')}:" in message
    assert "'minimum.cores'" in message and "integer" in message


def test_syntax_error_names_file_and_line(tmp_path):
    path = broken_copy(tmp_path, "jumbo.toml", "disk_tb = 16", "disk_tb = = 16")
    with pytest.raises(TomlFileError) as err:
        load_profile(path)
    assert err.value.line == line_of(path, "disk_tb")
    assert str(err.value).startswith(f"{path}:{err.value.line}: invalid TOML")


def test_unknown_key_is_refused(tmp_path):
    path = broken_copy(tmp_path, "mini.toml", "nic_ports = 2", "nic_port = 2")
    with pytest.raises(TomlFileError) as err:
        load_profile(path)
    assert err.value.key == "minimum.nic_port"
    assert err.value.line == line_of(path, "nic_port =")


def test_missing_key_and_bad_values(tmp_path):
    path = broken_copy(tmp_path / "a", "mini.toml", "cores = 16", "")
    with pytest.raises(TomlFileError, match=r"'minimum\.cores': missing") as err:
        load_profile(path)
    assert err.value.line == line_of(path, "[minimum]")
    path = broken_copy(tmp_path / "b", "standard.toml", '"ledger"]', '"ledgers"]')
    with pytest.raises(TomlFileError, match=r"'capabilities\.always'.*'ledgers' is not one of"):
        load_profile(path)
    path = broken_copy(tmp_path / "c", "jumbo.toml", "memory = 0.05", "memory = 5")
    with pytest.raises(TomlFileError, match=r"'tolerance\.memory'"):
        load_profile(path)
    path = broken_copy(tmp_path / "d", "mini.toml", "cores = 16", "cores = -16")
    with pytest.raises(TomlFileError, match="negative"):
        load_profile(path)


def test_duplicate_rank_is_refused(tmp_path):
    path = broken_copy(tmp_path, "jumbo.toml", "rank = 3", "rank = 2")
    with pytest.raises(ProfileError, match="share rank 2"):
        load_profiles(path.parent)
