"""Check the MLflow UI as a user sees it, in headless Chromium, and save the README's screenshots.

    python scripts/ui_screenshots.py [--workspace .] [--out docs/screenshots]   (make screenshots)

It starts `python -m mlpipe.ui` on a free loopback port over the workspace's store (which the
pipeline filled), opens the link it prints, and checks three pages, saving each:
runs.png (the experiment's runs table, every training run listed by name), run-metrics.png
(a run's per-epoch charts, val_accuracy among them) and registry.png (the registered model's
versions with their champion and challenger aliases). Chromium and its driver are Debian's
(`apt-get install chromium chromium-driver`); no browser is downloaded. Exit 1 if a page does
not show what it should.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
PAGE_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_ui(workspace: Path, port: int) -> tuple[subprocess.Popen, str]:
    """`python -m mlpipe.ui` in the workspace; the process and the link it printed, once the
    UI answers."""
    import requests

    process = subprocess.Popen(
        [sys.executable, "-m", "mlpipe.ui", "--port", str(port)],
        cwd=workspace,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    first = process.stderr.readline()
    found = re.search(r"open (\S+)", first)
    if not found:
        stop(process)
        raise RuntimeError(f"python -m mlpipe.ui did not start: {first.strip()}")
    # Keep reading what the server says, so that a full pipe never blocks it.
    threading.Thread(target=process.stderr.read, daemon=True).start()
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                return process, found.group(1)
        except requests.ConnectionError:
            time.sleep(0.5)
    stop(process)
    raise RuntimeError(f"mlflow ui did not answer on port {port} within {PAGE_TIMEOUT_S:.0f} s")


def stop(process: subprocess.Popen) -> None:
    import signal

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)


def browser() -> WebDriver:
    """Headless Chromium through Debian's driver, at a fixed window size for stable pictures."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1400,900")
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_for_text(driver, *texts: str) -> str:
    """The page's text once it shows every one of `texts`; RuntimeError naming the missing."""
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    while True:
        body = driver.find_element("tag name", "body").text
        missing = [text for text in texts if text not in body]
        if not missing:
            return body
        if time.monotonic() > deadline:
            raise RuntimeError(f"{driver.current_url}: never showed {missing}")
        time.sleep(0.5)


def close_assistant(driver) -> None:
    """The UI's assistant panel covers a third of the page: close it if it is open."""
    from selenium.common.exceptions import WebDriverException

    for button in driver.find_elements("css selector", "button[aria-label='Close']"):
        try:
            button.click()
        except WebDriverException:
            continue


def capture(workspace: Path, out: Path) -> dict[str, Path]:
    """Visit the three pages, check them, save their screenshots; the files by page name."""
    from mlflow import MlflowClient

    sys.path.insert(0, str(ROOT))
    from mlpipe.config import load_params
    from mlpipe.tracking.store import tracking_uri

    params = load_params(workspace / "params.yaml")
    client = MlflowClient(tracking_uri=tracking_uri(workspace.resolve()))
    experiment = client.get_experiment_by_name(params.mlflow.experiment_name)
    # The newest runs: the table draws only the rows that fit on the screen.
    runs = client.search_runs(
        [experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=3
    )
    names = [run.info.run_name for run in runs]
    model = params.registered_model_name
    out.mkdir(parents=True, exist_ok=True)
    process, link = start_ui(workspace, free_port())
    driver = browser()
    shots = {}
    try:
        driver.get(link)
        wait_for_text(driver, "Model training", *names)
        close_assistant(driver)
        shots["runs"] = out / "runs.png"
        driver.save_screenshot(str(shots["runs"]))

        driver.find_element("link text", names[0]).click()
        wait_for_text(driver, "Model metrics")
        driver.find_element("xpath", "//*[text()='Model metrics']").click()
        wait_for_text(driver, "val_accuracy", "Step")
        close_assistant(driver)
        shots["run-metrics"] = out / "run-metrics.png"
        driver.save_screenshot(str(shots["run-metrics"]))

        driver.get(link.split("#", 1)[0] + f"#/models/{model}")
        wait_for_text(driver, model, "@ champion", "@ challenger")
        close_assistant(driver)
        shots["registry"] = out / "registry.png"
        driver.save_screenshot(str(shots["registry"]))
    finally:
        driver.quit()
        stop(process)
    return shots


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, default=ROOT)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    try:
        shots = capture(args.workspace, args.out)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, path in shots.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
