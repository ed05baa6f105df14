"""Off loopback the panel serves only HTTPS, with a certificate made at its first start."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request

import pytest

from tests.e2e.panel_stack import PanelStack


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory):
    stack = PanelStack(tmp_path_factory.mktemp("tls"))
    try:
        stack.start_daemon()
        stack.start_panel(host="0.0.0.0")
        yield stack
    finally:
        stack.stop()


def test_panel_off_loopback_serves_https_with_its_own_certificate(tls_stack):
    assert tls_stack.url.startswith("https://")
    port = tls_stack.url.rsplit(":", 1)[1]
    cert = tls_stack.state_dir / "panel" / "tls.crt"
    assert cert.exists() and (tls_stack.state_dir / "panel" / "tls.key").exists()
    # The generated certificate is the trust anchor, and it names localhost.
    context = ssl.create_default_context(cafile=str(cert))
    with urllib.request.urlopen(f"https://localhost:{port}/login", context=context,
                                timeout=10) as answer:
        assert answer.status == 200
        assert "Secure" in answer.headers["Set-Cookie"]
        assert answer.headers["Strict-Transport-Security"].startswith("max-age=")
    # Clear text is not served on that port.
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=10)
