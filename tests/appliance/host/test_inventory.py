from __future__ import annotations

import pytest

from appliance.host.inventory import detect
from tests.appliance import fakehost
from tests.appliance.fakehost import (
    AMD_CHIPSET,
    HYGON_CRYPTO,
    HYGON_DCU,
    HYGON_HOST_BRIDGE,
    HYGON_SMBUS,
    NVIDIA_AUDIO,
    NVIDIA_H100,
    TB,
    XILINX_ALVEO,
    FakeHost,
)


def test_cpu_counts_physical_cores_and_threads(tmp_path):
    inv = detect(FakeHost(cores=24, threads_per_core=2).build(tmp_path), survey=False)
    assert inv.cpu.cores == 24
    assert inv.cpu.threads == 48
    assert inv.cpu.model == "Hygon C86 7285 32-core Processor"


def test_memory_from_meminfo(tmp_path):
    inv = detect(FakeHost(memory_bytes=15 * 1024**3).build(tmp_path), survey=False)
    assert inv.memory_bytes == 15 * 1024**3


def test_disks_skip_virtual_and_removable(tmp_path):
    host = FakeHost(disks={"nvme0n1": 4 * TB, "sdb": 2 * TB})
    inv = detect(host.build(tmp_path), survey=False)
    assert sorted(d.name for d in inv.disks) == ["nvme0n1", "sdb"]
    assert inv.disk_bytes == 6 * TB


def test_nics_down_unknown_and_virtual(tmp_path):
    host = FakeHost(nics={
        "eno1": (1000, "up"),
        "eno2": (None, "down"),         # speed file holds -1
        "eno3": ("unreadable", "down"),  # the read itself fails (EINVAL)
        "eno4": (None, "up"),            # up, driver does not say
    })
    nics = {n.name: n for n in detect(host.build(tmp_path), survey=False).nics}
    assert set(nics) == {"eno1", "eno2", "eno3", "eno4"}  # lo and docker0 are not ports
    assert (nics["eno1"].speed_mbps, nics["eno1"].up) == (1000, True)
    assert (nics["eno2"].speed_mbps, nics["eno2"].up) == (None, False)
    assert (nics["eno3"].speed_mbps, nics["eno3"].up) == (None, False)
    assert (nics["eno4"].speed_mbps, nics["eno4"].up) == (None, True)


def test_hygon_chipset_without_dcu_has_no_accelerator(tmp_path):
    host = FakeHost(pci={"0000:00:00.0": HYGON_HOST_BRIDGE, "0000:00:14.0": HYGON_SMBUS,
                         "0000:00:15.0": HYGON_CRYPTO, "0000:00:18.0": AMD_CHIPSET})
    assert detect(host.build(tmp_path), survey=False).accelerators == []


def test_accelerators_by_vendor_and_class(tmp_path):
    host = FakeHost(pci={
        "0000:00:00.0": HYGON_HOST_BRIDGE,
        "0000:41:00.0": HYGON_DCU,
        "0000:42:00.0": (0x1D94, 0x55B8, 0x038000),  # a DCU shown as "other display"
        "0000:81:00.0": NVIDIA_H100,
        "0000:81:00.1": NVIDIA_AUDIO,
        "0000:c1:00.0": XILINX_ALVEO,
        "0000:c2:00.0": (0x1172, 0x5052, 0x118000),  # Intel/Altera signal processing
        "0000:c3:00.0": (0x1002, 0x740F, 0x038000),  # AMD Instinct
    })
    found = {a.pci: (a.kind, a.vendor) for a in detect(host.build(tmp_path), survey=False)
             .accelerators}
    assert found == {
        "0000:41:00.0": ("dcu", "hygon"),
        "0000:42:00.0": ("dcu", "hygon"),
        "0000:81:00.0": ("gpu", "nvidia"),
        "0000:c1:00.0": ("fpga", "xilinx"),
        "0000:c2:00.0": ("fpga", "intel-altera"),
        "0000:c3:00.0": ("gpu", "amd"),
    }


def test_tpm_and_tee(tmp_path):
    inv = detect(fakehost.jumbo().build(tmp_path), survey=False)
    assert inv.tpm == {"present": True, "path": "/dev/tpmrm0"}
    assert inv.tee == {"sgx": False, "sev_snp": True, "tdx": False}
    assert "sev_snp" in inv.cpu.flags_tee


def test_tee_from_device_node_alone(tmp_path):
    inv = detect(FakeHost(devices=("/dev/sgx_enclave",)).build(tmp_path), survey=False)
    assert inv.tee["sgx"] is True
    assert inv.tpm["present"] is False


def test_to_dict_has_the_api_keys(tmp_path):
    data = detect(fakehost.mini().build(tmp_path), survey=False).to_dict()
    assert set(data) == {"cpu", "memory_bytes", "disks", "nics", "accelerators", "tpm", "tee",
                         "accel_devices"}
    assert {"model", "cores", "flags_tee"} <= set(data["cpu"])


def test_missing_root_and_missing_cpuinfo(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        detect(str(tmp_path / "nowhere"), survey=False)
    with pytest.raises(FileNotFoundError, match="proc/cpuinfo"):
        detect(str(tmp_path), survey=False)


def test_survey_reports_every_backend_without_raising(tmp_path):
    inv = detect(fakehost.mini().build(tmp_path), survey=True)
    import accel.backends

    # one survey: the router's own, with each backend's health probe run
    assert inv.backends == accel.backends.available()
    assert [b["name"] for b in inv.backends] == accel.backends.names()
    for b in inv.backends:
        assert b["healthy"] or b["reason"]  # an unhealthy backend always says why
    assert inv.accel_devices == [{"backend": b["name"], "device": d}
                                 for b in inv.backends for d in b["devices"]]
