"""The panel's pure parts: chart geometry, form checks, listen addresses, TLS certificate."""

from __future__ import annotations

import argparse
import ipaddress
import stat
import subprocess
import sys

import pytest
from cryptography import x509

from appliance.panel.charts import benchmark_chart
from appliance.panel.cli import is_loopback, parse_listen
from appliance.panel.forms import FormError, flag_field, int_field, page_number, text_field
from appliance.panel.overview import capability_matrix
from appliance.panel.tls import ensure_certificate


def _row(accel: float, phe: float, target: float | None = None) -> dict:
    return {"accel_ops_s": accel, "phe_ops_s": phe, "ratio": accel / phe, "target": target}


def test_benchmark_chart_scales_bars_by_log_of_ops():
    chart = benchmark_chart({"bits": 512, "phe": "phe 1.5", "backends": {"cpu": {
        "encrypt": _row(10000.0, 100.0, 40.0),
        "decrypt": _row(1000.0, 500.0, 1.8),
    }}})
    assert chart is not None and [r.operation for r in chart.rows] == ["encrypt", "decrypt"]
    assert chart.series == [("cpu", "bar-0"), ("phe 1.5", "bar-base")]
    encrypt, decrypt = chart.rows
    assert [m.ratio for m in encrypt.measures + decrypt.measures] == [100.0, 2.0]
    assert encrypt.measures[0].meets_target and decrypt.measures[0].meets_target
    enc_accel, enc_phe = encrypt.bars
    dec_accel, _ = decrypt.bars
    # one decade is the same width wherever it sits on the axis
    decade = enc_accel.width - dec_accel.width
    assert decade == pytest.approx((enc_accel.width - enc_phe.width) / 2, abs=0.2)
    assert enc_phe.y > enc_accel.y and decrypt.label_y > encrypt.label_y
    assert chart.height > decrypt.bars[-1].y


def test_benchmark_chart_puts_every_backend_beside_one_baseline():
    chart = benchmark_chart({"backends": {
        "cpu": {"ct + ct": _row(5e5, 2e4, 10.0), "broken": {"accel_ops_s": "fast"}},
        "opencl": {"ct + ct": _row(1e5, 2e4, 10.0)},
    }})
    assert [r.operation for r in chart.rows] == ["ct + ct"]
    (row,) = chart.rows
    assert [b.series for b in row.bars] == ["cpu", "opencl", "python-paillier"]
    assert [m.meets_target for m in row.measures] == [True, False]
    assert len({b.y for b in row.bars}) == 3


@pytest.mark.parametrize(
    "result",
    [None, {}, {"backends": {}}, {"backends": {"cpu": {"x": {"accel_ops_s": 1.0}}}}, [1, 2]],
)
def test_benchmark_chart_is_none_without_measurements(result):
    assert benchmark_chart(result) is None


def test_form_checks_say_what_is_wrong():
    assert text_field({"a": "  hi "}, "a", max_len=5) == "hi"
    assert text_field({"a": " pw "}, "a", max_len=5, strip=False) == " pw "
    with pytest.raises(FormError, match="a is missing"):
        text_field({}, "a", max_len=5)
    with pytest.raises(FormError, match="too long"):
        text_field({"a": "x" * 6}, "a", max_len=5)
    with pytest.raises(FormError, match="at least 3"):
        text_field({"a": "xy"}, "a", max_len=5, min_len=3)
    assert int_field({"n": "42"}, "n", minimum=1, maximum=50) == 42
    with pytest.raises(FormError, match="whole number"):
        int_field({"n": "4.2"}, "n", minimum=1, maximum=50)
    with pytest.raises(FormError, match="between 1 and 50"):
        int_field({"n": "51"}, "n", minimum=1, maximum=50)
    assert flag_field({"q": "on"}, "q") and not flag_field({}, "q")
    with pytest.raises(FormError, match="checkbox"):
        flag_field({"q": "perhaps"}, "q")
    assert [page_number({"page": p}) for p in ("3", "0", "-1", "x", "9" * 9)] == [3, 1, 1, 1, 1]


def test_listen_addresses():
    assert parse_listen("127.0.0.1:8443") == ("127.0.0.1", 8443)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    for bad in ("8443", "host:", ":80", "host:http", "host:70000"):
        with pytest.raises(argparse.ArgumentTypeError, match="HOST:PORT"):
            parse_listen(bad)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")


def test_certificate_is_made_once_for_the_listen_address(tmp_path):
    cert_path, key_path = ensure_certificate(tmp_path / "panel", "10.1.2.3")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("10.1.2.3") in sans.get_values_for_type(x509.IPAddress)
    again = ensure_certificate(tmp_path / "panel", "10.1.2.3")
    assert again == (cert_path, key_path)
    assert x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number == \
        cert.serial_number


def test_capability_matrix_marks_each_profiles_offer_and_this_node():
    matrix = capability_matrix(["mpc", "fl", "ledger"], {
        "mini": {"always": [], "choose_one": ["mpc", "fl"]},
        "standard": {"always": ["mpc", "fl", "ledger"]},
        "jumbo": {"always": ["mpc", "fl", "ledger", "tee"]},
    }, current="standard")
    assert matrix["profiles"] == [{"name": "mini", "current": False},
                                  {"name": "standard", "current": True},
                                  {"name": "jumbo", "current": False}]
    rows = {row["name"]: row for row in matrix["rows"]}
    assert [c["offer"] for c in rows["mpc"]["cells"]] == ["one of", "yes", "yes"]
    assert [c["offer"] for c in rows["tee"]["cells"]] == ["no", "no", "yes"]
    assert rows["mpc"]["enabled"] and not rows["tee"]["enabled"]
    assert all([c["current"] for c in row["cells"]] == [False, True, False]
               for row in matrix["rows"])
    unclassified = capability_matrix([], {"mini": {"choose_one": ["mpc"]}}, current="none")
    assert unclassified["profiles"] == [{"name": "mini", "current": False}]
    only_node = capability_matrix(["mpc", "quantum"], None)
    assert only_node["profiles"] == []
    assert [r["name"] for r in only_node["rows"]][-1] == "quantum"


def test_panel_loads_nothing_of_the_trust_root_or_the_store():
    """The panel reaches the node only through the daemon's API (DESIGN.md)."""
    # Allowed beside the panel: its client and the constants it shares with the daemon.
    code = (
        "import sys, appliance.panel.app, appliance.panel.cli\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('hsm', 'tee', 'pkcs11', 'tpm2_pytss', 'sqlite3', 'accel')"
        " or m.startswith('appliance.') and not m.startswith(('appliance.panel', "
        "'appliance.client', 'appliance.jobs.states', 'appliance.accounts.rules'))"
        # the wings' packages themselves: their __init__ modules hold only a docstring
        " and m not in ('appliance.jobs', 'appliance.accounts')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    assert out == "[]"
