"""Session setup of the browser suite: Debian `chromium` + `chromium-driver` (installed with apt-get when
missing, like the container suite installs docker.io), one headless Chromium driven by selenium, screenshots
under var/browser/, and the real stacks the dashboard is tested on.

Fixtures:
  browser      a selenium WebDriver in a NEW tab (fresh sessionStorage, so signed out), window 1400x900;
               one Chromium process serves the whole session (each test gets its own tab)
  screenshot   `screenshot(name)` -> writes var/browser/<name>.png (the folder is printed at the end)
  ui_stack     session scope (one stack per backend, shared by every module), parametrized `embedded`
               (SQLite + local store) / `production` (PostgreSQL + Redis + S3): a real API + one worker
               on every queue; `.url`, `.token`, `.platform`, `.sampler_url`; `.models` -> {"mdlm": id}
               starts the sampler service and publishes a tiny trained MDLM on first use (trained once
               per session, ~15-30 s)

Missing prerequisites skip the suite on a developer machine and fail it under CI (`CI` set), as the
other suites do with missing servers. Screenshots of a failed test go to var/browser/FAILED-<test>.png,
with the browser's console log in the test report.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.utils.fixtures import BACKEND_PARAMS, _backend, need
from tests.utils.harness import REPO, Platform

CHROMIUM = Path(os.environ.get("BROWSER_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("BROWSER_CHROMEDRIVER", "/usr/bin/chromedriver"))
PACKAGES = {CHROMIUM: "chromium", CHROMEDRIVER: "chromium-driver"}
OUT = Path(os.environ.get("BROWSER_OUT", REPO / "var" / "browser"))
WINDOW = (1400, 900)
APT_TIMEOUT_S = 900

SHOTS: list[Path] = []


def install_chromium() -> None:
    """apt-get install the missing packages (root only). A file lock keeps two sessions from racing, and
    dpkg's own lock is waited for (another engineer's apt-get) instead of failing."""
    missing = sorted({pkg for path, pkg in PACKAGES.items() if not path.exists()})
    if not missing:
        return
    need(
        os.geteuid() == 0 and shutil.which("apt-get") is not None,
        f"{', '.join(missing)} missing and not root: apt-get install -y {' '.join(missing)}",
    )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock_wait = ["-o", f"DPkg::Lock::Timeout={APT_TIMEOUT_S}"]
    with open("/tmp/mmdlm-browser-apt.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all(path.exists() for path in PACKAGES):
            return  # another session installed them while we waited
        for args in (
            ["apt-get", *lock_wait, "update", "-qq"],
            ["apt-get", *lock_wait, "install", "-y", "-qq", "--no-install-recommends", *missing],
        ):
            done = subprocess.run(
                args, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S, check=False
            )
            need(done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    need(
        all(path.exists() for path in PACKAGES),
        f"{' '.join(missing)} installed but {CHROMIUM} or {CHROMEDRIVER} absent",
    )


def _options(profile: Path) -> Any:
    from selenium.webdriver.chrome.options import Options

    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
        "--disable-extensions", "--disable-background-networking", "--disable-sync", "--mute-audio",
        f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--user-data-dir={profile}", "--lang=en-US",
    ):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return options


class Chromium:
    """One Chromium + chromedriver for the session, restarted if a test killed it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.driver: Any = None
        self.starts = 0
        self.size = WINDOW

    def get(self) -> Any:
        if self.driver is not None:
            try:
                self.driver.window_handles  # noqa: B018 - a round trip: is the browser still there?
                return self.driver
            except Exception:
                self.quit()
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.starts += 1
        profile = self.workdir / f"profile-{self.starts}"
        # an explicit driver path: selenium-manager (which would download a driver) never runs
        service = Service(
            executable_path=str(CHROMEDRIVER), log_output=str(self.workdir / "chromedriver.log")
        )
        self.driver = webdriver.Chrome(service=service, options=_options(profile))
        # the window's frame takes part of --window-size: grow it so the PAGE is 1400x900
        inner = self.driver.execute_script(
            "return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight]"
        )
        self.size = (WINDOW[0] + inner[0], WINDOW[1] + inner[1])
        self.driver.set_window_size(*self.size)
        self.driver.set_page_load_timeout(60)
        self.driver.set_script_timeout(60)
        return self.driver

    def quit(self) -> None:
        if self.driver is not None:
            try:
                self.driver.quit()
            except Exception:
                pass
            self.driver = None


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    try:
        import selenium  # noqa: F401
    except ImportError:
        need(False, "selenium is not installed (pip install -r requirements-dev.txt)")
    install_chromium()
    browser = Chromium(tmp_path_factory.mktemp("chromium"))
    try:
        browser.get()
    except Exception as exc:
        need(False, f"headless Chromium did not start: {type(exc).__name__}: {exc}")
    yield browser
    browser.quit()


@pytest.fixture
def browser(chromium: Chromium) -> Iterator[Any]:
    """The session's Chromium in a fresh tab: new sessionStorage (signed out), a 1400x900 page."""
    driver = chromium.get()
    first = driver.window_handles[0]
    driver.switch_to.new_window("tab")
    tab = driver.current_window_handle
    driver.set_window_size(*chromium.size)
    yield driver
    try:
        if len(driver.window_handles) > 1 and tab in driver.window_handles:
            driver.switch_to.window(tab)
            driver.close()
        driver.switch_to.window(first if first in driver.window_handles else driver.window_handles[0])
    except Exception:
        chromium.quit()  # a broken browser: the next test starts a fresh one


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    """A failed test that used `browser`: a screenshot of the page (FAILED-<test>.png) and the browser's
    console log as a section of the failure report."""
    report = yield
    driver = getattr(item, "funcargs", {}).get("browser")
    if report.when == "call" and report.failed and driver is not None:
        try:
            path = _save(driver, "FAILED-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", item.name))
            console = "\n".join(f"{e.get('level')} {e.get('message')}" for e in driver.get_log("browser"))
            report.sections.append(("browser console", f"{console or '(empty)'}\nscreenshot: {path}"))
        except Exception as exc:  # the browser itself may be what failed
            report.sections.append(("browser console", f"unavailable: {type(exc).__name__}: {exc}"))
    return report


def _save(driver: Any, name: str) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.png"
    if not driver.save_screenshot(str(path)):
        raise RuntimeError(f"the browser could not write {path}")
    SHOTS.append(path)
    return path


@pytest.fixture
def screenshot(browser: Any) -> Callable[[str], Path]:
    """`screenshot("jobs")` -> var/browser/jobs.png of the current page (names: letters, digits, -_.)."""

    def take(name: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"screenshot name {name!r}: use letters, digits, '-', '_' and '.'")
        return _save(browser, name)

    return take


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not SHOTS:
        return
    terminalreporter.section("browser screenshots")
    for path in dict.fromkeys(SHOTS):
        terminalreporter.write_line(str(path.relative_to(REPO) if path.is_relative_to(REPO) else path))
    terminalreporter.write_line(f"(folder: {OUT})")


# --- stacks ------------------------------------------------------------------------------------------------


@dataclass
class UiStack:
    """A real API + one worker on every queue over one backend; the sampler service starts on demand."""

    backend: str
    platform: Platform
    sampler_port: int
    tiny_root: Path
    _stack: ExitStack = field(default_factory=ExitStack)
    _models: dict[str, str] | None = None

    @property
    def url(self) -> str:
        return self.platform.url

    @property
    def token(self) -> str:
        return self.platform.token

    @property
    def sampler_url(self) -> str:
        return f"http://127.0.0.1:{self.sampler_port}"

    @property
    def models(self) -> dict[str, str]:
        """{"mdlm": model artifact id} of a tiny trained MDLM (vocabulary 512, context 32), with the
        sampler service running; built on first use."""
        if self._models is None:
            from tests.integration.sampler.helpers import model_metadata, publish_folder, sampler_process

            folder = tiny_mdlm(self.tiny_root)
            self._stack.enter_context(sampler_process(self.platform, self.sampler_port))
            self._models = {
                "mdlm": publish_folder(self.platform, folder, kind="model", metadata=model_metadata(folder))
            }
        return self._models


def tiny_mdlm(root: Path) -> Path:
    """A cpu-nano MDLM trained 12 steps on a small slice of the bundled corpus (once per session)."""
    import torch

    from mmdlm.training import train
    from mmdlm.training.debug import debug_train_config, prepare_debug_dataset

    run = root / "tiny-mdlm"
    with open(root / "tiny-mdlm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (run / "final" / "config.json").is_file():
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                dataset = prepare_debug_dataset(
                    root / "trainer-datasets", seq_len=32, vocab_size=512, documents_per_part=60
                )
                overrides = {"steps": 12, "data": {"batch_size": 8}, "model": {"model": {"max_seq_len": 32}}}
                train(debug_train_config("mdlm", dataset, run, overrides=overrides))
            finally:
                torch.set_num_threads(threads)
    return run / "final"


@pytest.fixture(scope="session", params=BACKEND_PARAMS)
def ui_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiStack]:
    from tests.integration.sampler.helpers import sampler_env

    workdir = tmp_path_factory.mktemp(f"ui-{request.param}")
    port, env = sampler_env()
    started = time.monotonic()
    with (
        _backend(request.param, request, workdir / "backend") as backend,
        Platform(backend, workdir / "p", env=env) as platform,
    ):
        stack = UiStack(request.param, platform, port, tmp_path_factory.getbasetemp())
        print(f"ui_stack {request.param} up in {time.monotonic() - started:.1f}s at {platform.url}")
        with stack._stack:
            yield stack
