"""The Dagster UI as a newcomer meets it, in a real browser.

After a `fruits run` over a few real images (private DAGSTER_HOME and lake), `dagster-webserver -w workspace.yaml`
is started on loopback with the same DAGSTER_HOME and FRUITS_* settings, and Debian's Chromium, headless and
driven over the Chrome DevTools Protocol, opens the pages a person would: the asset catalog, the lineage graph,
an asset's partitions, the PCA assets' metadata (with the plots opened as images) and the asset checks.
Screenshots land in a temporary folder whose path is printed (`pytest -m ui -s` shows it), or in
FRUITS_UI_SCREENSHOTS when set. The webserver's
GraphQL API is cross-checked for the same facts.

Chromium comes from Debian (`apt-get install -y chromium`, installed here when missing and we are root, as in
CI); no test tool downloads a browser. The CDP client is `websockets`, which dagster-webserver already pulls in
(through uvicorn[standard]).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import CLASSES, PROJECT_DIR, copy_images
from tests.lake_tables import lake_dataset

pytestmark = [pytest.mark.ui, pytest.mark.slow]

K = 3
IMAGES_PER_CLASS = 6
ASSETS = ["raw_images", "labelled_images", "mobilenet_features", "image_errors", "pca_model", "pca_features"]
LINEAGE = {  # asset -> its upstream assets, as the UI must draw them
    "raw_images": set(),
    "labelled_images": {"raw_images"},
    "mobilenet_features": {"labelled_images", "raw_images"},
    "image_errors": {"labelled_images", "raw_images"},
    "pca_model": {"mobilenet_features"},
    "pca_features": {"pca_model", "mobilenet_features"},
}
CHECKS = {
    "labelled_images": {"labels_present"},
    "mobilenet_features": {"counts_are_conserved", "features_are_finite_1280"},
    "pca_model": {"explained_variance_is_valid"},
    "pca_features": {"pca_features_separate_classes"},
}
GROUPS = ["ingest", "features", "reduction"]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-dev-shm-usage",
]
WIDTH, HEIGHT = 1600, 1100
WEBSERVER_START_S = 120
PAGE_TIMEOUT_S = 45


# --- Chromium: found, or installed from Debian ------------------------------------------------------------------


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def ensure_chromium() -> str:
    """Debian's chromium, installed with apt-get when missing (CI runs as root). Fails, never skips."""
    found = find_chromium()
    if found:
        return found
    how = "install it with `apt-get install -y chromium` (Debian's package; .ci/run does this)"
    if not shutil.which("apt-get"):
        pytest.fail(f"The UI test needs Chromium and this machine has no apt-get: {how}.")
    if os.geteuid() != 0:
        pytest.fail(f"The UI test needs Chromium, which is missing, and installing it needs root: {how}.")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log = []
    for command in (["apt-get", "install", "-y", "-qq", "chromium"], ["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "chromium"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        log.append(f"$ {' '.join(command)} -> {done.returncode}\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        found = find_chromium()
        if found:
            return found
    pytest.fail(f"Could not install Debian's chromium with apt-get ({how}):\n" + "\n".join(log))


# --- A small Chrome DevTools Protocol client ------------------------------------------------------------------------


class Browser:
    """One headless Chromium page, driven over CDP: navigate, evaluate JavaScript, click, screenshot."""

    def __init__(self, binary: str, workdir: Path):
        from websockets.sync.client import connect

        profile = workdir / "chromium-profile"  # a fresh profile every time
        profile.mkdir(parents=True)
        self.log_path = workdir / "chromium.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
             f"--window-size={WIDTH},{HEIGHT}", "about:blank"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                pytest.fail(f"Chromium did not start (exit {self.proc.poll()}): {self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages = []
        while not pages and time.monotonic() < deadline:
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5))
            pages = [t for t in targets if t.get("type") == "page"]
            time.sleep(0.1)
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=15)
        self._id = 0
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, timeout: float = 60, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"CDP {method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'", "the page to load")

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for(self, expression: str, what: str, timeout: float = PAGE_TIMEOUT_S):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.25)
        raise AssertionError(f"Timed out waiting for {what}; the page shows:\n{self.text()[:3000]}")

    def wait_for_text(self, *needles: str, timeout: float = PAGE_TIMEOUT_S) -> str:
        wanted = json.dumps(list(needles))
        self.wait_for(f"{wanted}.every(n => document.body && document.body.innerText.includes(n))",
                      f"{list(needles)} on the page", timeout)
        return self.text()

    def settle(self, seconds: float = 1.5) -> None:
        """Let spinners, layout and fonts finish before a screenshot (the data is already asserted)."""
        self.wait_for("document.fonts ? document.fonts.status === 'loaded' : true", "fonts", 10)
        time.sleep(seconds)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


# --- The webserver --------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(base: str, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"{base}/graphql", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.load(response)
    assert not answer.get("errors"), answer["errors"]
    return answer["data"]


LOCATION_QUERY = """{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def wait_for_webserver(base: str, proc: subprocess.Popen, log: Path) -> None:
    """Until the webserver answers and the fruit_assets code location has loaded."""
    deadline = time.monotonic() + WEBSERVER_START_S
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dagster-webserver exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            entries = graphql(base, LOCATION_QUERY)["workspaceOrError"]["locationEntries"]
            last = entries
            entry = next((e for e in entries if e["name"] == "fruit_assets"), None)
            if entry and entry["loadStatus"] == "LOADED":
                error = entry["locationOrLoadError"]
                if error and error["__typename"] == "PythonError":
                    pytest.fail(f"The fruit_assets code location failed to load in the UI: {error['message']}")
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"dagster-webserver not ready in {WEBSERVER_START_S}s (locations: {last}):\n{log.read_text()[-4000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


# --- Fixtures -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    return ensure_chromium()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    chosen = os.environ.get("FRUITS_UI_SCREENSHOTS")  # a folder that outlives pytest's temporary ones
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("ui-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\n[test_ui] screenshots: {folder}")
    return folder


def newcomer_env(settings: dict) -> dict:
    """This process's environment without settings other tests may have left behind, plus these settings."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith(("FRUITS_", "EMR_", "AWS_", "DAGSTER_"))}
    return {**kept, **settings}


@pytest.fixture(scope="module")
def ui(tmp_path_factory, weights, engine_cache, chromium):
    """`fruits run` into a private instance, then the webserver on loopback with the same settings."""
    base_dir = tmp_path_factory.mktemp("ui")
    home = base_dir / "dagster_home"
    home.mkdir()
    # A newcomer's instance, minus the one-time "Join the Dagster community" dialog that would cover the pages.
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\nnux:\n  enabled: false\n")
    images = copy_images(base_dir / "images", per_class=IMAGES_PER_CLASS)
    settings = {
        "DAGSTER_HOME": str(home),
        "FRUITS_IMAGES_ROOT": str(images),
        "FRUITS_LAKE_ROOT": str(base_dir / "lake"),
        "FRUITS_MOBILENET_WEIGHTS": str(weights),
        "FRUITS_PCA_K": str(K),
        "FRUITS_CACHE_DIR": str(engine_cache),
        "FRUITS_DEPLOYMENT": "local",
    }
    # `fruits run` as a person runs it, in its own process: fruit_assets.definitions builds its resources from the
    # FRUITS_* settings when first imported, so an in-process run after other tests would reuse their settings.
    run_log = base_dir / "fruits_run.log"
    with open(run_log, "w") as out:
        done = subprocess.run([str(Path(sys.executable).parent / "fruits"), "run"], cwd=PROJECT_DIR,
                              env=newcomer_env(settings), stdout=out, stderr=subprocess.STDOUT, timeout=600)
    summary = [line for line in run_log.read_text().splitlines() if line.startswith("[fruits]")]
    assert done.returncode == 0, "fruits run failed; the UI would have nothing to show:\n" + "\n".join(summary[-15:])

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = base_dir / "webserver.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-webserver"), "-w", "workspace.yaml",
             "-h", "127.0.0.1", "-p", str(port)],
            cwd=PROJECT_DIR, env=newcomer_env(settings), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_webserver(base, proc, log)
        yield {"base": base, "settings": settings, "log": log, "lake": base_dir / "lake"}
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def browser(ui, chromium, tmp_path_factory):
    page = Browser(chromium, tmp_path_factory.mktemp("chromium"))
    yield page
    page.close()


# --- What the UI shows ----------------------------------------------------------------------------------------------


ASSET_QUERY = """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { __typename ... on AssetNode {
  description groupName isPartitioned partitionKeys dependencyKeys { path }
  partitionStats { numMaterialized numPartitions numFailed }
  assetPartitionStatuses { __typename ... on DefaultPartitionStatuses { materializedPartitions failedPartitions } }
  assetChecksOrError { __typename ... on AssetChecks { checks { name blocking
    executionForLatestMaterialization { status evaluation { success } } } } }
  assetMaterializations(limit: 1) { metadataEntries { label __typename
    ... on MarkdownMetadataEntry { mdStr } ... on JsonMetadataEntry { jsonString } } } } } }"""


def asset_node(base: str, name: str) -> dict:
    node = graphql(base, ASSET_QUERY, {"key": {"path": [name]}})["assetNodeOrError"]
    assert node["__typename"] == "AssetNode", (name, node)
    return node


def test_graphql_shows_lineage_partitions_metadata_and_checks(ui):
    base = ui["base"]
    names = {tuple(n["assetKey"]["path"]) for n in graphql(base, "{ assetNodes { assetKey { path } } }")["assetNodes"]}
    assert names == {(a,) for a in ASSETS}
    for name in ASSETS:
        node = asset_node(base, name)
        assert {k["path"][0] for k in node["dependencyKeys"]} == LINEAGE[name], name
        assert node["description"] and len(node["description"]) > 30, name
        if name.startswith("pca_"):
            assert not node["isPartitioned"], name
        else:  # one partition per class, each materialized
            assert sorted(node["partitionKeys"]) == sorted(CLASSES), name
            assert node["partitionStats"] == {"numMaterialized": 4, "numPartitions": 4, "numFailed": 0}, name
            statuses = node["assetPartitionStatuses"]
            assert sorted(statuses["materializedPartitions"]) == sorted(CLASSES) and not statuses["failedPartitions"]
        checks = {c["name"]: c for c in node["assetChecksOrError"]["checks"]}
        assert set(checks) == CHECKS.get(name, set()), name
        for check in checks.values():
            execution = check["executionForLatestMaterialization"]
            assert execution and execution["status"] == "SUCCEEDED" and execution["evaluation"]["success"], check
    pca = {e["label"]: e for e in asset_node(base, "pca_model")["assetMaterializations"][0]["metadataEntries"]}
    assert len(json.loads(pca["explained_variance"]["jsonString"])) == K
    assert pca["variance_plot"]["__typename"] == "MarkdownMetadataEntry"
    assert "](data:image/png;base64," in pca["variance_plot"]["mdStr"]
    projection = {e["label"]: e for e in asset_node(base, "pca_features")["assetMaterializations"][0]["metadataEntries"]}
    assert "](data:image/png;base64," in projection["projection_plot"]["mdStr"]


def test_catalog_lists_the_assets_with_descriptions_and_partitions(ui, browser, shots):
    browser.goto(f"{ui['base']}/assets")
    text = browser.wait_for_text(*ASSETS, "4 partitions")
    for name in ASSETS:
        description = asset_node(ui["base"], name)["description"]
        assert description[:60] in text, f"{name}'s description is not in the catalog"
    assert text.count("4 partitions") == 4  # raw_images, labelled_images, mobilenet_features, image_errors
    assert text.count("Materialized") >= 2  # pca_model and pca_features
    assert "Join the Dagster community" not in text
    browser.settle()
    browser.screenshot(shots / "01_catalog.png")


def test_lineage_graph_draws_every_asset(ui, browser, shots):
    expanded = ",".join(f"global@global:{g}" for g in GROUPS)
    browser.goto(f"{ui['base']}/asset-groups?expanded={expanded}")
    browser.wait_for_text(*GROUPS)
    # Graph nodes are DOM elements (edges are SVG paths): every asset is drawn, and so are the edges.
    browser.wait_for(
        f"{json.dumps(ASSETS)}.every(a => [...document.querySelectorAll('[data-testid]')]"
        ".some(e => (e.getAttribute('data-testid') || '').includes(a)) || document.body.innerText.includes(a))",
        "every asset in the lineage graph",
    )
    edges = browser.wait_for("document.querySelectorAll('svg path').length", "edges in the lineage graph")
    assert edges >= len([u for ups in LINEAGE.values() for u in ups])
    browser.settle()
    browser.screenshot(shots / "02_lineage.png")


def test_partitions_page_shows_each_class_materialized(ui, browser, shots):
    browser.goto(f"{ui['base']}/assets/mobilenet_features?view=partitions")
    text = browser.wait_for_text(*CLASSES, "Materialized (4)")
    assert "Missing (0)" in text and "Failed (0)" in text
    browser.settle()
    browser.screenshot(shots / "03_mobilenet_features_partitions.png")
    browser.goto(f"{ui['base']}/assets/raw_images")  # the latest materialization's metadata: its class's and the run's counts
    text = browser.wait_for_text("class_images", "bytes_listed", "ignored_files")
    browser.settle()
    browser.screenshot(shots / "04_raw_images_overview.png")
    # two blocking checks on a partitioned asset
    show_passed_checks(browser, ui, "mobilenet_features", [*CHECKS["mobilenet_features"], "blocking"],
                       shots / "04b_mobilenet_features_checks.png")


OPEN_MARKDOWN = """(() => {
  const row = [...document.querySelectorAll('tr')].find(r => r.cells.length && r.cells[0].innerText.trim() === %s);
  if (!row) return 'no row';
  const button = [...row.querySelectorAll('*')].find(e => e.children.length === 0 && e.innerText.trim() === '[Show Markdown]');
  if (!button) return 'no button: ' + row.innerText.slice(0, 200);
  button.click();
  return 'clicked';
})()"""

PLOT_IMAGE = """(() => {
  const img = [...document.querySelectorAll('[role=dialog] img, .bp5-dialog img, .bp4-dialog img, img')]
    .find(i => (i.getAttribute('src') || '').startsWith('data:image/png;base64,') && i.alt === %s);
  return img && img.complete && img.naturalWidth > 100 ? [img.naturalWidth, img.naturalHeight, img.alt] : null;
})()"""


def show_passed_checks(browser, ui, asset: str, texts: list[str], shot) -> None:
    """The asset's checks tab shows `texts` and a passed check; screenshot saved as `shot`."""
    browser.goto(f"{ui['base']}/assets/{asset}?view=checks")
    browser.wait_for_text(*texts)
    browser.wait_for("/Passed|Succeeded/.test(document.body.innerText)", "a passed check")
    browser.settle()
    browser.screenshot(shot)


def open_plot(browser: Browser, label: str, alt: str) -> list:
    """Plots are Markdown metadata with an inline PNG; the UI shows long Markdown behind '[Show Markdown]'."""
    outcome = browser.wait_for(f"(() => {{ const r = {OPEN_MARKDOWN % json.dumps(label)}; "
                               "return r === 'clicked' ? r : null; })()", f"the {label} row's [Show Markdown]")
    assert outcome == "clicked"
    return browser.wait_for(PLOT_IMAGE % json.dumps(alt), f"the {label} PNG rendered as an <img>")


def test_pca_model_page_shows_variance_metadata_plot_and_check(ui, browser, shots):
    browser.goto(f"{ui['base']}/assets/pca_model")
    text = browser.wait_for_text("explained_variance", "cumulative_explained_variance", "variance_plot",
                                 "components_for_90_percent", "total_explained_variance")
    assert "[Show Markdown]" in text  # the plot is one click away, not inline (Markdown over 1000 characters)
    browser.evaluate("[...document.querySelectorAll('tr')].find(r => r.cells.length && "
                     "r.cells[0].innerText.trim() === 'variance_plot').scrollIntoView({block: 'center'})")
    browser.settle()
    browser.screenshot(shots / "05_pca_model_overview.png")
    width, height, _ = open_plot(browser, "variance_plot", "explained variance")
    assert width > 300 and height > 200
    browser.settle()
    browser.screenshot(shots / "06_pca_model_variance_plot.png")

    show_passed_checks(browser, ui, "pca_model", ["explained_variance_is_valid"], shots / "07_pca_model_checks.png")


def test_pca_features_page_shows_projection_plot_and_knn_check(ui, browser, shots):
    browser.goto(f"{ui['base']}/assets/pca_features")
    browser.wait_for_text("projection_plot", "csv_path")
    width, height, _ = open_plot(browser, "projection_plot", "2-D projection")
    assert width > 300 and height > 200
    browser.settle()
    browser.screenshot(shots / "08_pca_features_projection_plot.png")

    show_passed_checks(browser, ui, "pca_features", ["pca_features_separate_classes"], shots / "09_pca_features_checks.png")


# --- The README's account of the lake, against this real one -------------------------------------------------------


def readme_lake_section() -> str:
    text = (PROJECT_DIR / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## What it writes.*?$(.*?)^## ", text, re.M | re.S)
    assert match, "README has no 'What it writes' section"
    return match.group(1)


def documented_datasets() -> dict[str, dict[str, str] | None]:
    """Dataset folder -> {column: type} from the README's tables (None: documented without a table)."""
    datasets: dict[str, dict[str, str] | None] = {}
    for heading, body in re.findall(r"^### ([^\n]+)\n(.*?)(?=^### |\Z)", readme_lake_section(), re.M | re.S):
        names = re.findall(r"`([A-Za-z0-9_]+)/`", heading)
        if not names:  # prose subsections (e.g. bad input and re-runs) describe no dataset
            continue
        rows = re.findall(r"^\| `([A-Za-z0-9_]+)` \| ([a-z0-9<>]+) \|", body, re.M)
        datasets[names[0]] = dict(rows) or None
        for extra in names[1:]:
            datasets[extra] = None
    return datasets


def arrow_type(t) -> str:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        return arrow_type(t.value_type)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"array<{arrow_type(t.value_type)}>"
    names = {pa.string(): "string", pa.large_string(): "string", pa.int64(): "int64", pa.int32(): "int32",
             pa.binary(): "binary", pa.large_binary(): "binary", pa.float32(): "float", pa.float64(): "double",
             pa.bool_(): "boolean"}
    return names.get(t, str(t))


def spark_type(t) -> str:
    if isinstance(t, dict):
        return f"array<{spark_type(t['elementType'])}>" if t.get("type") == "array" else json.dumps(t)
    return {"long": "int64", "integer": "int32"}.get(t, t)


def test_readme_lake_layout_matches_the_lake(ui):
    """Every dataset the run wrote is in the README with exactly the columns and types it has."""
    import pyarrow.dataset as ds

    lake = ui["lake"]
    documented = documented_datasets()
    written = sorted(p.name for p in lake.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    assert sorted(documented) == written, f"README documents {sorted(documented)}, the lake holds {written}"
    for name, columns in documented.items():
        if columns is None:
            continue
        spark_schema = json.loads((lake / name / "_schema.json").read_text())  # there even when no rows are
        declared = {f["name"]: spark_type(f["type"]) for f in spark_schema["fields"]}
        assert declared == columns, f"{name}: README says {columns}, its _schema.json has {declared}"
        dataset = lake_dataset(lake, name)
        if dataset.files:
            actual = {field.name: arrow_type(field.type) for field in dataset.schema}
            assert actual == columns, f"{name}: README says {columns}, the Parquet files have {actual}"
    assert documented["image_errors"] and not ds.dataset(str(lake / "image_errors")).files  # no errors, still typed
    assert (lake / "pca_model" / "metadata").is_dir() and (lake / "pca_model" / "stages").is_dir()

    csv_doc = re.search(r"^### `pca_features_csv/`$(.*?)(?=^### |\Z)", readme_lake_section(), re.M | re.S).group(1)
    fixed = [n for n in re.findall(r"`([a-z0-9_]+)`", csv_doc) if not n.startswith("pca_features_")]
    header = next((lake / "pca_features_csv").glob("*.csv")).read_text().splitlines()[0].split(",")
    assert header == fixed + [f"pca_features_{i}" for i in range(1, K + 1)]
    variance_header = next((lake / "pca_explained_variance_csv").glob("*.csv")).read_text().splitlines()[0]
    assert variance_header.split(",") == list(documented["pca_explained_variance"])


def test_readme_python_snippet_runs_on_the_lake(ui, monkeypatch, capsys):
    text = (PROJECT_DIR / "README.md").read_text(encoding="utf-8")
    snippets = re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)
    assert snippets
    monkeypatch.chdir(ui["lake"].parent)
    for snippet in snippets:
        exec(compile(snippet, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert all(c in printed for c in CLASSES) and printed.strip().endswith(str(K))
