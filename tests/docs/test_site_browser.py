"""The built site in a real headless Chromium, served over loopback, nothing else reachable."""
from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import needs_chromium

pytestmark = needs_chromium


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def site_url(site):
    """The built site over HTTP on a free loopback port (search needs HTTP, not file://)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(_QuietHandler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()



def test_pages_render_with_the_theme_and_the_generated_tables(browser, site_url, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(f"{site_url}/configuration/")
    assert browser.title.startswith("Configuration")
    # The theme's own stylesheet and script loaded: the navigation is drawn as Material draws it.
    assert browser.find_element(By.CSS_SELECTOR, "nav.md-nav--primary").is_displayed()
    cells = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "article td code")]
    assert "REDIS_URL" in cells and "BENCH_ORDERS" in cells
    browser.get(f"{site_url}/api/")
    assert browser.find_element(By.XPATH, "//h4[contains(., '/stats/top-users')]").is_displayed()
    browser.save_screenshot(str(tmp_path / "api.png"))


def test_search_finds_a_configuration_variable(browser, site_url, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{site_url}/")
    query = WebDriverWait(browser, 10).until(
        shown.element_to_be_clickable((By.CSS_SELECTOR, "input.md-search__input")))
    query.click()
    query.send_keys("REDIS_URL")
    shown_results = shown.visibility_of_any_elements_located(
        (By.CSS_SELECTOR, "li.md-search-result__item a.md-search-result__link"))

    def configuration_links(driver) -> list[str]:
        """The shown results' links to the configuration page; none yet while it searches."""
        links = [result.get_attribute("href") for result in shown_results(driver)]
        return [link for link in links if link.startswith(f"{site_url}/configuration/")]

    # The theme redraws the results as they come, so an element found may be gone when read:
    # the wait then looks again.
    WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,)).until(
        configuration_links, message="no search result links to the configuration page")
    browser.save_screenshot(str(tmp_path / "search.png"))
