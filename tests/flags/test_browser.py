"""A real browser (Debian's headless Chromium through its chromedriver) logs
into the operator admin, sets a flag's rollout with the list action, and the API
sees the change. Skipped, with the reason, where no browser is installed
(`.ci/run` installs one with apt when it can)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django_tenants.utils import schema_context

from apps.flags.models import Flag
from tests.support import Personas

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip(f"no browser: {CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (requirements/dev.txt)")
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # The operator admin answers on PUBLIC_DOMAIN only (testserver in tests): the
    # browser resolves that name to the loopback server.
    arguments = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu")
    for argument in (*arguments, "--host-resolver-rules=MAP testserver 127.0.0.1"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(5)
    try:
        yield driver
    finally:
        driver.quit()


def test_an_operator_sets_a_rollout_in_the_admin_and_the_api_sees_it(
    browser: Any, platform_server, committed_personas: Personas
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    with schema_context("public"):
        get_user_model().objects.create_superuser("op-browser", "op@x.test", "pw-browser-1")
    flag = Flag.objects.create(key="browser-rollout", model="local-small", rollout_model="premium-large")
    api = committed_personas.alice.client()
    # At 0% a platform flag decides nothing for anyone, so a user's key does not see it.
    assert api.get("/api/v1/flags").json()["data"] == []
    try:
        site = platform_server.url.replace("127.0.0.1", "testserver")
        browser.get(f"{site}/admin/login/?next=/admin/flags/flag/")
        browser.find_element(By.NAME, "username").send_keys("op-browser")
        browser.find_element(By.NAME, "password").send_keys("pw-browser-1")
        browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        # The flag list, logged in (its row's checkbox is there once the page has loaded).
        browser.find_element(By.CSS_SELECTOR, f"input[name=_selected_action][value='{flag.pk}']")

        browser.find_element(By.CSS_SELECTOR, f"input[name=_selected_action][value='{flag.pk}']").click()
        Select(browser.find_element(By.NAME, "action")).select_by_value("set_rollout_100")
        browser.find_element(By.CSS_SELECTOR, "button[name=index]").click()
        WebDriverWait(browser, 20).until(lambda page: "now at 100%" in page.page_source)

        with schema_context("public"):
            flag.refresh_from_db()
        assert flag.enabled and flag.rollout_percent == Decimal("100")
        assert api.get("/api/v1/flags").json()["data"][0]["routes_to"] == "premium-large"
    finally:
        with schema_context("public"):
            get_user_model().objects.filter(username="op-browser").delete()
