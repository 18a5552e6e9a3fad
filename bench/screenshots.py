"""Screenshots of the MLflow UI after a study, as a person sees it (headless Chromium).

Runs ``optsearch study`` on a config in a fresh folder, starts ``mlflow ui`` on its store,
and saves three PNGs: the runs table with the trials nested under their parent, a trial's
charts, and the parent run's plots. Needs Debian's ``chromium`` and the ``playwright``
Python package (its driver only: the system Chromium is used, nothing is downloaded).

    python -m bench.screenshots [--config quickstart] [--out docs] [--port 5077]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="quickstart")
    ap.add_argument("--out", default="docs")
    ap.add_argument("--port", type=int, default=5077)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="optsearch-shots-"))
    cmd = [sys.executable, "-m", "optsearch", "study", args.config] + [f"--set={o}" for o in args.overrides]
    subprocess.run(cmd, cwd=work, check=True, stdout=subprocess.DEVNULL)
    store = f"sqlite:///{work}/mlflow.db"
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store, "--port",
                           str(args.port)], cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _shoot(store, f"http://127.0.0.1:{args.port}", out)
    finally:
        ui.terminate()
        ui.wait(timeout=30)
    print(f"screenshots in {out} (study in {work})")


def _shoot(store: str, base: str, out: Path) -> None:
    from mlflow import MlflowClient
    from playwright.sync_api import sync_playwright

    client = MlflowClient(store)
    exp = client.search_experiments(filter_string="name != 'Default'")[0]
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    trials = sorted((r for r in runs if "mlflow.parentRunId" in r.data.tags),
                    key=lambda r: int(r.data.tags["optsearch.trial_number"]))
    pruned = next((r for r in trials if r.data.tags.get("optsearch.state") == "pruned"), trials[0])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        for _ in range(60):  # the UI server takes a few seconds to start
            try:
                page.goto(f"{base}/#/experiments/{exp.experiment_id}?workflowType=machine_learning")
                break
            except Exception:  # noqa: BLE001
                time.sleep(1)
        page.wait_for_timeout(4000)
        _close_assistant(page)
        # Unfold the parent: its "+" sits left of its name, at the status dot's left.
        box = page.get_by_text(parent.info.run_name[:12]).first.bounding_box()
        if box:
            page.mouse.click(box["x"] - 31, box["y"] + box["height"] / 2)
            page.wait_for_timeout(2000)
        page.screenshot(path=str(out / "mlflow-runs.png"))
        page.goto(f"{base}/#/experiments/{exp.experiment_id}/runs/{pruned.info.run_id}/model-metrics")
        page.wait_for_timeout(5000)
        _close_assistant(page)
        page.screenshot(path=str(out / "mlflow-trial-charts.png"))
        page.goto(f"{base}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}/artifacts/"
                  "parallel_coordinate.png")
        page.wait_for_timeout(5000)
        _close_assistant(page)
        page.screenshot(path=str(out / "mlflow-parent-plots.png"))
        browser.close()


def _close_assistant(page) -> None:
    """MLflow 3.17 opens an assistant panel beside the runs; close it for the picture."""
    for sel in ("button[aria-label='Close']", "[data-testid='assistant-close-button']"):
        loc = page.locator(sel)
        if loc.count():
            try:
                loc.first.click(timeout=1000)
            except Exception:  # noqa: BLE001
                pass
            return


if __name__ == "__main__":
    main()
