"""The MLflow UI as users see it: headless Chromium (Debian's chromium + chromium-driver, selenium).

Starts ``sdsnn-search ui`` on a finished study folder, opens the experiment from the experiment
list, switches to its runs, expands the study's parent run and finds every trial run nested under
it. By default the study is a tiny one run by the real runner with a stand-in trainable (no
training, so the test stays fast); ``SDSNN_UI_STUDY=<results/study>`` runs the same checks on any
finished study, e.g. the quickstart (that is how the README's screenshot was made).

Needs /usr/bin/chromium and /usr/bin/chromedriver (.ci/run installs them). Without them the test
is skipped, unless SDSNN_REQUIRE_BROWSER=1 (set by CI), where it fails. With
SDSNN_UI_SCREENSHOT=<png path> it also saves a screenshot of the expanded runs table (the README's).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,800"]


def _require_browser() -> None:
    if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER):
        return
    msg = "headless Chromium not installed (apt-get install -y chromium chromium-driver)"
    if os.environ.get("SDSNN_REQUIRE_BROWSER") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_study(root: Path) -> dict:
    """A finished tiny study made by the real runner (Ray Tune, Optuna, MLflow tracking callback).

    Only the trainable is a stand-in (``search_fakes.fake_trial``: metrics computed from the
    config, no training), so the study's MLflow store is exactly what ``sdsnn-search run`` writes.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    import ray.cloudpickle

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import search_fakes

    from sdsnn_search.runner import run_study
    from sdsnn_search.space import parse_space

    spec = parse_space({
        "dataset": "digits",
        "experiment": {"train": {"epochs": 1}},
        "params": {"train.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2},
                   "plasticity.shrink_factor": {"type": "uniform", "low": 0.5, "high": 0.9}},
        "reference_point": [0.0, 2000.0],
        "search": {"num_samples": 3, "max_concurrent": 1, "sampler": "random", "seed": 1},
    })
    ray.shutdown()
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    ray.cloudpickle.register_pickle_by_value(search_fakes)
    try:
        out = run_study(spec, results_dir=root, name="digits-ui", trainable=search_fakes.fake_trial, progress=False)
    finally:
        ray.shutdown()
    assert not out.interrupted
    return _real_study(out.study_dir)


def _real_study(path: Path) -> dict:
    """The same facts read from a finished study folder (``SDSNN_UI_STUDY``) and its MLflow store."""
    from mlflow.tracking import MlflowClient

    info = json.loads((path / "study.json").read_text())
    c = MlflowClient(tracking_uri=info["tracking_uri"])
    parent = c.get_run(info["parent_run_id"])
    children = c.search_runs([parent.info.experiment_id],
                             filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=1000)
    assert children, f"{path}: the parent run has no trial runs"
    return {"dir": path, "uri": info["tracking_uri"], "experiment": info["experiment_name"],
            "experiment_id": parent.info.experiment_id, "parent_name": parent.info.run_name,
            "trial_names": [r.info.run_name for r in children]}


def _start_ui(study: dict, port: int) -> subprocess.Popen:
    """``sdsnn-search ui DIR`` when the CLI has it, else the MLflow server it wraps."""
    from sdsnn_search.cli import main

    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    if "ui" in main.commands:
        cmd = [sys.executable, "-m", "sdsnn_search.cli", "ui", str(study["dir"]), "--port", str(port)]
    else:
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", study["uri"],
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log_path = Path(tempfile.mkdtemp()) / "ui.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"UI server exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise AssertionError("UI server did not answer /health within 90 s")


def _cmdline_has(proc_dir: Path, text: str) -> bool:
    try:
        st = (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[0]
        return st != "Z" and text in (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False


def _wait(fn, timeout: float = 60.0, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_mlflow_ui_shows_study_parent_and_trial_runs(tmp_path):
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    real = os.environ.get("SDSNN_UI_STUDY")
    study = _real_study(Path(real).resolve()) if real else _tiny_study(tmp_path)
    port = _free_port()
    server = _start_ui(study, port)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in CHROME_FLAGS + [f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"]:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        base = f"http://127.0.0.1:{port}/"
        driver.get(base + "#/experiments")
        body = lambda: driver.find_element(By.TAG_NAME, "body").text  # noqa: E731

        # open the experiment from the experiment list
        link = _wait(lambda: [a for a in driver.find_elements(By.TAG_NAME, "a")
                              if a.text.strip() == study["experiment"]], what="the experiment in the list")[0]
        link.click()
        m = _wait(lambda: re.search(r"#/experiments/(\d+)", driver.current_url), what="the experiment page")
        assert m.group(1) == str(study["experiment_id"])

        # its training runs: the parent run, collapsed, with the trial runs nested under it
        driver.get(base + f"#/experiments/{m.group(1)}/runs")
        name_cells = "[col-id='attributes.`Run Name`']"
        expander = _wait(lambda: driver.find_elements(
            By.CSS_SELECTOR, f"{name_cells} button[data-component-id*='runnamecellrenderer']"),
            what="the parent run's expander")
        run_names = lambda: [e.text.strip().splitlines()[-1] for e in driver.find_elements(By.CSS_SELECTOR, name_cells)  # noqa: E731
                             if e.text.strip()]  # a cell reads "<colour label>\n<run name>"
        _wait(lambda: study["parent_name"] in run_names(), what="the parent run")
        assert not any(t in body() for t in study["trial_names"]), "trial runs should start nested (collapsed)"
        expander[0].click()
        _wait(lambda: all(t in body() for t in study["trial_names"]), what="the trial runs under the parent")
        names = run_names()
        assert names.index(study["parent_name"]) < min(names.index(t) for t in study["trial_names"])
        assert f"{len(study['trial_names']) + 1} matching runs" in body()
        shot = os.environ.get("SDSNN_UI_SCREENSHOT")
        if shot:
            for b in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
                try:  # the assistant side panel hides the metric columns; close it for the picture
                    b.click()
                except Exception:
                    pass
            time.sleep(1.0)
            Path(shot).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(shot)
    finally:
        driver.quit()
        os.kill(server.pid, 15)  # SIGTERM to the `sdsnn-search ui` process alone (kill PID)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
    # ... ends the MLflow server and every worker it forked, too
    leftover = lambda: [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, f"--port {port}")]  # noqa: E731
    deadline = time.time() + 20
    while leftover() and time.time() < deadline:
        time.sleep(0.5)
    assert not leftover(), [(p.name, (p / "cmdline").read_bytes()[:120]) for p in leftover()]
