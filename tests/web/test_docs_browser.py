"""/docs in a real headless Chromium with every non-local address unreachable."""
import shutil
import subprocess

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(not CHROMIUM, reason="needs Debian's chromium (make test installs it)")
def test_docs_render_the_kpi_operations_without_internet(api_server, tmp_path):
    # Any address but loopback goes to a dead proxy: a CDN asset would leave a blank page.
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               f"--user-data-dir={tmp_path / 'profile'}", "--proxy-server=http://127.0.0.1:9",
               "--virtual-time-budget=15000", "--dump-dom", f"{api_server}/docs"]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    for path in ("/kpis/orders", "/kpis/categories", "/files/executions/{execution_id}"):
        assert f'data-path="{path}"' in dom, path
    assert "opblock-summary-method" in dom  # operations rendered, not just the page shell
