"""The browser suite's own plumbing: headless Chromium reaches the real stack on both backends, a page's
script can call the API with the bearer token in a header, and screenshots land under var/browser/."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import mmdlm
from tests.browser.conftest import WINDOW, UiStack

pytestmark = [pytest.mark.browser, pytest.mark.integration]

FETCH = """
const [url, token, done] = arguments;
fetch(url, {headers: {Authorization: "Bearer " + token}})
  .then(async (r) => done({status: r.status, body: await r.json()}))
  .catch((e) => done({status: -1, body: String(e)}));
"""


def test_browser_opens_healthz_calls_the_api_and_writes_a_screenshot(
    ui_stack: UiStack, browser: Any, screenshot: Callable[[str], Path]
) -> None:
    browser.get(f"{ui_stack.url}/healthz")
    assert '"status":"ok"' in browser.find_element("tag name", "body").text.replace(" ", "")
    assert browser.execute_script("return [window.innerWidth, window.innerHeight]") == list(WINDOW)
    assert browser.execute_script("return sessionStorage.length") == 0  # a fresh tab: signed out

    answer = browser.execute_async_script(FETCH, f"{ui_stack.url}/v1/system", ui_stack.token)
    assert answer["status"] == 200, answer
    assert answer["body"]["versions"]["mmdlm"] == mmdlm.__version__
    database = "sqlite" if ui_stack.backend == "embedded" else "postgresql"
    assert answer["body"]["backends"]["database"] == database
    assert browser.execute_async_script(FETCH, f"{ui_stack.url}/v1/system", "wrong")["status"] == 401

    path = screenshot(f"infra-healthz-{ui_stack.backend}")
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 1000
