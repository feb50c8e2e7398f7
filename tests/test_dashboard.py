"""The Grafana dashboard and the alerting rules in deploy/, proven against a
real Prometheus.

A Prometheus of the test's own (free port, temporary storage, the deploy
scrape job at a 1 s interval, the deploy alerting rules) scrapes the real
app while traffic reaches every panel; then Prometheus itself evaluates
every query of every panel, with the dashboard's variables as Grafana
fills them, and every alerting rule. A panel that shows nothing, a query
that ignores the chosen job or instance, a panel without a unit, or a
panel or rule naming a metric the app does not export fails here instead
of on an operator's screen. (tests/test_alerts.py fires and clears each
alert with promtool.)
"""

import asyncio
import contextlib
import json
import math
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.promql import matchers, metric_names, selectors
from tests.scrape import samples, scrape
from tests.support import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
README = ROOT / "README.md"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "clips.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
SCRAPE_CONFIG = DEPLOY / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
# Where deploy/prometheus.yml expects the rules (docker-compose.yml mounts them).
ALERTS_MOUNTED = "/etc/prometheus/alerts.yml"
JOB = "clips"

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="needs the prometheus and promtool binaries (Debian package prometheus): "
    "run `make test-deps`",
)

# What Grafana would put in place of its variables. $__rate_interval is at
# least four scrape intervals in Grafana; 10 s of 1 s scrapes keeps several
# samples per window without making the test wait long. $job is the deploy
# job; $instance is "All" (the variable's allValue) unless a test names the
# app's own target. $datasource is a uid, never inside a query.
GRAFANA_VARIABLES = {
    "job": JOB,
    "instance": ".*",
    "__rate_interval": "10s",
    "__interval": "1s",
    "__interval_ms": "1000",
    "__range": "1m",
    "__range_s": "60",
    "__range_ms": "60000",
}
SCRAPES_BEFORE_QUERYING = 5
DEADLINE_SECONDS = 30

# Series Prometheus itself records for every target, not in /metrics.
PROMETHEUS_OWN = {"up"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Every selector carries these, so the job and instance pickers apply to
# every panel.
SCOPE = {'job="$job"', 'instance=~"$instance"'}
# Health checks and scrapes are not the API: out of its latency.
NOT_API = 'route!~"/healthz|/readyz|/metrics"'
# Grafana unit ids the panels may use; a per-second panel says per what.
UNITS = {"reqps", "ops", "Bps", "s", "bytes", "percentunit", "short"}
PER_SECOND_UNITS = {"reqps", "ops", "Bps"}


# The dashboard as files


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def substitute(expr: str, **values: str) -> str:
    """The expr as Grafana sends it to Prometheus, `values` overriding the
    test's GRAFANA_VARIABLES."""
    variables = GRAFANA_VARIABLES | values

    def value(match: re.Match) -> str:
        return variables.get(match["braced"] or match["bare"], match[0])

    return re.sub(r"\$\{(?P<braced>\w+)(?::\w+)?\}|\$(?P<bare>\w+)", value, expr)


def variables(dashboard: dict) -> dict[str, dict]:
    return {variable["name"]: variable for variable in dashboard["templating"]["list"]}


def variable_query(variable: dict) -> tuple[str, str]:
    """(series selector, label) of a `label_values(selector, label)` variable."""
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
    assert match, variable
    assert variable["definition"] == variable["query"]["query"]
    return match[1], match[2]


def test_every_dashboard_variable_has_a_test_value():
    dashboard = load_dashboard()
    unknown = [(title, expr) for title, expr in queries(dashboard) if "$" in substitute(expr)]
    assert not unknown, f"variables missing from GRAFANA_VARIABLES: {unknown}"
    defined = set(variables(dashboard)) - {"datasource"}
    assert defined == {"job", "instance"}
    assert defined <= set(GRAFANA_VARIABLES)


def test_metric_names_are_read_from_promql():
    expr = (
        '(sum(rate(a_total{status=~"5..", x="b_total"}[5m])) or vector(0))'
        " / sum by (le, route) (rate(c_bucket[$__rate_interval])) > bool d"
        ' unless min_over_time(e{job="x"}[1h] offset 1h) > 0.99'
    )
    assert metric_names(expr) == {"a_total", "c_bucket", "d", "e"}
    assert selectors('up{job="$job", instance=~"$instance"} == 0') == [
        ("up", 'job="$job", instance=~"$instance"')
    ]
    assert matchers('job="$job",instance=~ "$instance"') == SCOPE


def test_every_panel_queries_the_chosen_prometheus():
    """No data source uid is written in: the `datasource` variable picks any
    Prometheus, the provisioned one (the default) in the compose stack."""
    provisioned = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]
    assert provisioned["type"] == "prometheus"
    assert provisioned["isDefault"]
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 39
    chooser = variables(dashboard)["datasource"]
    assert chooser["type"] == "datasource"
    assert chooser["query"] == "prometheus"
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in [panel, *panel["targets"]]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    for name in ("job", "instance"):
        assert variables(dashboard)[name]["datasource"] == DATASOURCE


def test_the_job_and_instance_variables_scope_every_query():
    dashboard = load_dashboard()
    job, instance = variables(dashboard)["job"], variables(dashboard)["instance"]
    assert variable_query(job)[1] == "job"
    assert not job["multi"]
    assert not job["includeAll"]
    selector, label = variable_query(instance)
    assert label == "instance"
    assert matchers(selector) == {'job="$job"'}
    # Several instances or all of them, as a regex: hence `instance=~`.
    assert instance["multi"]
    assert instance["includeAll"]
    assert instance["allValue"] == ".*"
    unscoped = [
        (title, name)
        for title, expr in queries(dashboard)
        for name, inner in selectors(expr)
        if not SCOPE.issubset(matchers(inner))
    ]
    assert not unscoped, f"selectors without {SCOPE}: {unscoped}"


def test_api_latency_leaves_out_health_checks_and_scrapes(app):
    routes = {resource.canonical for resource in app.router.resources()}
    assert {"/healthz", "/readyz", "/metrics"} <= routes
    latency = [
        (title, inner)
        for title, expr in queries(load_dashboard())
        for name, inner in selectors(expr)
        if name == "clips_http_request_duration_seconds_bucket"
    ]
    assert latency
    for title, inner in latency:
        assert NOT_API in matchers(inner), title


def test_every_panel_has_a_unit():
    for panel in panels(load_dashboard()):
        if panel["type"] == "row":
            continue
        unit = panel["fieldConfig"]["defaults"].get("unit")
        exprs = " ".join(target["expr"] for target in panel["targets"])
        assert unit in UNITS, f"{panel['title']!r}: unit {unit!r}"
        if "histogram_quantile" in exprs:
            assert unit == "s", panel["title"]
        elif "rate(" in exprs:
            assert unit in PER_SECOND_UNITS | {"percentunit"}, panel["title"]


def test_the_leak_signal_and_every_exported_family_have_a_panel():
    """The README calls the task count the leak signal: it has its panel,
    as does every clips_* family /metrics documents."""
    named = {name for _, expr in queries(load_dashboard()) for name in metric_names(expr)}
    assert "clips_event_loop_tasks" in named
    families = set(re.findall(r"`(clips_\w+)`", README.read_text()))
    histograms = {name.removesuffix("_bucket") for name in named}
    assert families <= named | histograms, families - named - histograms


# Traffic that reaches every panel


TOKEN = "metrics-token-0123456789"


@pytest.fixture
def settings(settings):
    # Upstream timeouts are part of the traffic: keep each one short. The
    # token is the deployed stack's: Prometheus must present it.
    return settings.changed({"upstream_headers_timeout": 0.5, "metrics_token": TOKEN})


@pytest.fixture
async def failing_origin(aiohttp_server):
    """An origin that fails: 500 at once, or headers later than the app waits."""

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500)

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.5)  # past the app's 0.5 s headers timeout
        return web.Response(body=b"late")

    app = web.Application()
    app.router.add_get("/broken.mp3", broken)
    app.router.add_get("/slow.mp3", slow)
    return await aiohttp_server(app)


@pytest.fixture
async def catalogue(make_clip, origin, failing_origin) -> dict[str, int]:
    """Clips whose streams end in every way the dashboard distinguishes."""
    urls = {
        "remote": origin.make_url("/audio/small.mp3"),
        "origin_404": origin.make_url("/audio/missing.mp3"),
        "origin_500": failing_origin.make_url("/broken.mp3"),
        "origin_slow": failing_origin.make_url("/slow.mp3"),
        "refused": "http://10.255.255.1/guarded.mp3",  # not in UPSTREAM_ALLOW
        "unreachable": f"http://127.0.0.1:{free_port()}/nobody.mp3",
    }
    clips = {name: await make_clip(audio_url=str(url)) for name, url in urls.items()}
    clips["stored"] = await make_clip(media_path="small.mp3")
    return clips


async def status_of(client, path: str) -> int:
    async with client.get(path) as response:
        await response.read()
        return response.status


async def drive(client, clips: dict[str, int]) -> None:
    """One round of traffic, checked, so a panel's data has a known cause."""
    expected = {
        "/clips": 200,
        f"/clips/{clips['stored']}": 200,
        "/clips/424242": 404,
        f"/clips/{clips['stored']}/stream": 200,
        f"/clips/{clips['remote']}/stream": 200,
        f"/clips/{clips['origin_404']}/stream": 502,
        f"/clips/{clips['origin_500']}/stream": 502,
        f"/clips/{clips['refused']}/stream": 502,
        f"/clips/{clips['unreachable']}/stream": 502,
        f"/clips/{clips['origin_slow']}/stream": 504,
    }
    answered = {path: await status_of(client, path) for path in expected}
    assert answered == expected


async def drive_until_cancelled(client, clips: dict[str, int]) -> None:
    while True:
        await drive(client, clips)


@contextlib.asynccontextmanager
async def traffic(client, clips: dict[str, int]):
    """Traffic that keeps flowing while Prometheus scrapes and answers."""
    await drive(client, clips)  # a broken round fails here, plainly
    task = asyncio.create_task(drive_until_cancelled(client, clips))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # re-raises what broke a round


async def exported_metric_names(client) -> set[str]:
    return {name for name, _ in samples(await scrape(client, Authorization=f"Bearer {TOKEN}"))}


async def test_every_metric_a_panel_names_is_exported(client, catalogue):
    await drive(client, catalogue)  # labelled series exist once used
    exported = await exported_metric_names(client) | PROMETHEUS_OWN
    for title, expr in queries(load_dashboard()):
        names = metric_names(substitute(expr))
        assert names, f"{title!r}: no metric found in {expr!r}"
        assert names <= exported, f"{title!r} names metrics /metrics lacks: {names - exported}"


# A real Prometheus


@needs_prometheus
def test_the_scrape_config_is_valid(tmp_path):
    # promtool checks the token file exists: the stack mounts it as a secret.
    token_file = tmp_path / "metrics_token"
    token_file.write_text(TOKEN)
    # It also reads the rule files, which the stack mounts from deploy/.
    text = SCRAPE_CONFIG.read_text().replace("/run/secrets/metrics_token", str(token_file))
    assert ALERTS_MOUNTED in text
    text = text.replace(ALERTS_MOUNTED, str(ALERTS))
    config = tmp_path / "prometheus.yml"
    config.write_text(text)
    result = subprocess.run(
        [PROMTOOL, "check", "config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def scrape_config(target: str, token_file: Path) -> dict:
    """The deploy job, pointed at `target` every second with the token in
    `token_file`, and the deploy rules evaluated every second: the dashboard
    and the alerts are proven against the job name, path and authorization
    operators deploy."""
    deployed = yaml.safe_load(SCRAPE_CONFIG.read_text())
    assert deployed["rule_files"] == [ALERTS_MOUNTED]
    job = next(job for job in deployed["scrape_configs"] if job["job_name"] == JOB)
    assert job["authorization"]["credentials_file"] == "/run/secrets/metrics_token"
    job["authorization"]["credentials_file"] = str(token_file)
    job |= {"scrape_interval": "1s", "scrape_timeout": "1s"}
    job["static_configs"] = [{"targets": [target]}]
    return {
        "global": {"evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [job],
    }


class Prometheus:
    """A running Prometheus: its HTTP API, and its log to explain failures."""

    def __init__(self, url: str, process: subprocess.Popen, log: Path):
        self.url = url
        self.process = process
        self.log = log

    def check_running(self) -> None:
        if self.process.poll() is not None:
            pytest.fail(f"prometheus exited ({self.process.returncode}):\n{self.log.read_text()}")

    async def query(self, session: aiohttp.ClientSession, promql: str) -> dict:
        """An instant query, as Grafana's stat panels and instant targets send."""
        async with session.get(f"{self.url}/api/v1/query", params={"query": promql}) as response:
            return await response.json()

    async def label_values(self, session: aiohttp.ClientSession, selector: str, label: str):
        """What Grafana's `label_values(selector, label)` variable offers."""
        url = f"{self.url}/api/v1/label/{label}/values"
        async with session.get(url, params={"match[]": selector}) as response:
            return (await response.json())["data"]

    async def rules(self, session: aiohttp.ClientSession) -> list[dict]:
        async with session.get(f"{self.url}/api/v1/rules") as response:
            answer = await response.json()
        return [rule for group in answer["data"]["groups"] for rule in group["rules"]]

    async def wait_until(self, session: aiohttp.ClientSession, promql: str, what: str) -> None:
        """Poll until `promql` has a result, within the deadline."""

        async def answered() -> bool:
            self.check_running()
            # Until it is ready it refuses connections, then answers 503 text.
            with contextlib.suppress(aiohttp.ClientError):
                return bool((await self.query(session, promql))["data"]["result"])
            return False

        await wait_until(
            answered,
            f"prometheus: {what}",
            seconds=DEADLINE_SECONDS,
            interval=0.2,
            details=self.log.read_text,
        )


@pytest.fixture
def prometheus(client, tmp_path):
    """A Prometheus of our own scraping the app. It never touches :9090,
    where the Debian package may run the system's."""
    token_file = tmp_path / "metrics_token"
    token_file.write_text(TOKEN)
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(f"127.0.0.1:{client.server.port}", token_file)))
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Prometheus(f"http://127.0.0.1:{port}", process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def problem_with(answer: dict) -> str | None:
    """Why a query's answer would leave its panel empty, or None."""
    if answer.get("status") != "success":
        return f"{answer.get('errorType')}: {answer.get('error')}"
    result = answer["data"]["result"]
    if not result:
        return "no series"
    if not any(math.isfinite(float(series["value"][1])) for series in result):
        return f"only NaN or infinite values: {result}"
    return None


@needs_prometheus
async def test_every_panel_query_returns_data_from_a_real_prometheus(client, catalogue, prometheus):
    async with traffic(client, catalogue), aiohttp.ClientSession() as session:
        await prometheus.wait_until(
            session,
            f'sum_over_time(up{{job="{JOB}"}}[1m]) >= {SCRAPES_BEFORE_QUERYING}',
            f"{SCRAPES_BEFORE_QUERYING} successful scrapes of the app",
        )
        # The pickers offer the deploy job and the app's target; choosing
        # them (rather than All) proves every panel follows the choice.
        target = f"127.0.0.1:{client.server.port}"
        dashboard = load_dashboard()
        for name, value in (("job", JOB), ("instance", target)):
            selector, label = variable_query(variables(dashboard)[name])
            offered = await prometheus.label_values(session, substitute(selector), label)
            assert value in offered, f"${name} offers {offered}, not {value}"
        problems = []
        for title, expr in queries(dashboard):
            answer = await prometheus.query(session, substitute(expr, instance=target))
            if (problem := problem_with(answer)) is not None:
                problems.append(f"{title!r}: {expr}\n    -> {problem}")
    assert not problems, "panels without data:\n" + "\n".join(problems)


async def test_every_metric_an_alert_names_is_exported(client, catalogue):
    await drive(client, catalogue)
    exported = await exported_metric_names(client) | PROMETHEUS_OWN
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            names = metric_names(rule["expr"])
            assert names, rule["alert"]
            assert names <= exported, f"{rule['alert']} names {names - exported}"
            assert all('job="clips"' in matchers(inner) for _, inner in selectors(rule["expr"])), (
                f"{rule['alert']}: every selector takes the deploy job"
            )


@needs_prometheus
async def test_every_alert_rule_evaluates_against_the_real_app(client, catalogue, prometheus):
    """Each rule runs on the app's real series without an error (promtool's
    unit tests, tests/test_alerts.py, prove when each fires)."""
    async with traffic(client, catalogue), aiohttp.ClientSession() as session:
        await prometheus.wait_until(
            session,
            f'sum_over_time(up{{job="{JOB}"}}[1m]) >= {SCRAPES_BEFORE_QUERYING}',
            f"{SCRAPES_BEFORE_QUERYING} successful scrapes of the app",
        )
        expected = {
            rule["alert"] for rule in yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
        }
        rules: list[dict] = []

        async def evaluated() -> bool:
            nonlocal rules
            prometheus.check_running()
            rules = await prometheus.rules(session)
            return {rule["name"] for rule in rules} == expected and all(
                rule["health"] != "unknown" for rule in rules
            )

        await wait_until(evaluated, "prometheus: every rule evaluated", seconds=DEADLINE_SECONDS)
    broken = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not broken, broken
