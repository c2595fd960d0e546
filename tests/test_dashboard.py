"""``hpo dashboard`` in a real headless Chromium (Debian's chromium + chromium-driver)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import _env, query
from tests.look import look_cmd, make_toy_study, run_look

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def need_browser() -> None:
    """Skip only where the set-up cannot install Chromium (not root); in CI, never skip."""
    if CHROMIUM.is_file() and CHROMEDRIVER.is_file():
        return
    missing = "no /usr/bin/chromium or /usr/bin/chromedriver (make browser installs them as root)"
    if os.environ.get("CI") or os.geteuid() == 0:
        pytest.fail(missing)
    pytest.skip(missing)


def start_dashboard(
    cwd: Path, *args: str, preexec: Callable[[], object] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """Start ``hpo dashboard --port 0`` and return it with the study page's URL it prints;
    ``preexec`` runs in the child before it starts (how it inherits its signals)."""
    proc = subprocess.Popen(
        look_cmd("dashboard", "--port", "0", *args),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**_env(), "PYTHONFAULTHANDLER": "1"},  # SIGABRT prints every thread's stack
        preexec_fn=preexec,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"(http://127\.0\.0\.1:\d+/dashboard/studies/\d+)", line)
    if match is None:
        proc.kill()
        raise AssertionError(f"dashboard did not start: {line}{proc.stdout.read()}")
    return proc, match.group(1)


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """Ctrl-C the dashboard and wait for it, reading what it printed meanwhile (its output goes
    to a pipe only this reads, and a process blocked writing to a full pipe never exits): its
    exit code and that output."""
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        status = Path(f"/proc/{proc.pid}/status").read_text()
        signals = [line for line in status.splitlines() if line.startswith("Sig")]
        proc.send_signal(signal.SIGABRT)  # where it hangs, in the failure's message
        out, _ = proc.communicate()
        why = f"the dashboard did not stop 20 s after Ctrl-C ({signals}):\n{out[-6000:]}"
        raise AssertionError(why) from None
    return proc.returncode, out


@pytest.mark.parametrize(
    "inherited",
    [
        lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # a shell's background job
        lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}),
    ],
    ids=["sigint-ignored", "sigint-blocked"],
)
def test_ctrl_c_and_sigterm_stop_the_dashboard_whatever_it_inherited(
    tmp_path: Path, inherited: Callable[[], object]
) -> None:
    """Started with SIGINT ignored or blocked, the dashboard once served on after a Ctrl-C
    (and a full test run now and then hung stopping it); SIGTERM killed it (-15)."""
    db = make_toy_study(tmp_path)
    proc, _ = start_dashboard(tmp_path, "study=toy", f"storage.dir={db.parent}", preexec=inherited)
    assert stop(proc)[0] == 0
    proc, _ = start_dashboard(tmp_path, "study=toy", f"storage.dir={db.parent}", preexec=inherited)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


@pytest.fixture
def browser() -> Iterator[object]:
    need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    # An explicit driver path: Selenium Manager never looks for (or downloads) a browser.
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def body_text_with(driver: object, *needles: str, timeout: float = 30) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def has_all(d: object) -> str | bool:
        text = d.find_element(By.TAG_NAME, "body").text  # type: ignore[attr-defined]
        return text if all(n in text for n in needles) else False

    return WebDriverWait(driver, timeout).until(has_all)  # type: ignore[arg-type]


def test_dashboard_shows_trials_and_memory_attrs_in_chromium(
    tmp_path: Path, browser: object
) -> None:
    db = make_toy_study(tmp_path)
    proc, url = start_dashboard(tmp_path, "study=toy", f"storage.dir={db.parent}")
    try:
        browser.get(url)  # type: ignore[attr-defined]
        body_text_with(browser, "toy", "History")
        browser.save_screenshot(str(tmp_path / "study.png"))  # type: ignore[attr-defined]
        number = query(db, "select min(number) from trials where state = 'COMPLETE'")[0][0]
        browser.get(f"{url}/trials?numbers={number}")  # type: ignore[attr-defined]
        text = body_text_with(
            browser,
            f"Trial {number} (trial_id",
            "User Attributes",
            "peak_rss_mib",
            "end_reason complete",
        )
        browser.save_screenshot(str(tmp_path / "trials.png"))  # type: ignore[attr-defined]
    finally:
        assert stop(proc)[0] == 0
    assert re.search(r"\d+ Trials", text)
    assert "Complete" in text and "duration_s" in text
    for png in ("study.png", "trials.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep = os.environ.get("HPO_SCREENSHOT_DIR")
    if keep:
        shutil.copy(tmp_path / "trials.png", Path(keep) / "dashboard-trials.png")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["study.name=nope"], "does not exist"),
        (["--port", "70000"], "--port must be in 0..65535"),
    ],
)
def test_dashboard_user_mistakes_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_look(tmp_path, "dashboard", "study=toy", f"storage.dir={tmp_path}", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []
