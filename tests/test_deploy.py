"""Check the deploy files against the code: compose.yaml, the Dockerfile, Prometheus, the
Grafana dashboard, the Kubernetes and systemd examples. Then, where Docker is there, let
``docker compose config`` judge compose.yaml, and build the image and bring the stack up."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.metrics import Metrics
from policies.loading import load_policy
from workers import metrics as worker_metrics
from workers.queues import plan

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
QUEUES = ("local", "external", "github", "sandbox")
WORKERS = {f"worker-{queue}": queue for queue in QUEUES}
REQUIRED = {"redis", "postgres", "serve", *WORKERS, "flower", "prometheus", "grafana"}
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|API_KEY|PRIVATE_KEY$|BASIC_AUTH", re.I)
REFERENCE = re.compile(r"^\$\{[A-Z0-9_]+(:?[-?][^}]*)?\}$")
IMAGE_UID = "10001"  # the Dockerfile's cibot user
URL_PASSWORD = re.compile(r"://[^:/@\s]+:([^@\s]+)@")


def load(path: Path) -> Any:
    """Parse a YAML file."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """Return compose.yaml, parsed (YAML merge keys resolved)."""
    data: dict[str, Any] = load(ROOT / "compose.yaml")
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return compose.yaml's services."""
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def option(argv: list[str], *names: str) -> str:
    """Return the value after the first of ``names`` in a command line."""
    for index, word in enumerate(argv):
        if word in names:
            return argv[index + 1]
    raise AssertionError(f"{names[0]} is missing from {argv}")


def settings_variables() -> set[str]:
    """Return every CIBOT_* variable bot/kernel/settings.py reads (the per-tier names expanded)."""
    text = (ROOT / "bot" / "kernel" / "settings.py").read_text(encoding="utf-8")
    names = set(re.findall(r'"(CIBOT_[A-Z_]+)"', text))
    for tier in ("LOCAL", "MID", "FRONTIER"):
        names |= {f"CIBOT_{tier}_MODEL", f"CIBOT_{tier}_API_BASE"}
    return names


# ---- compose.yaml ---------------------------------------------------------------------------


def test_compose_has_every_service_with_an_image_and_a_healthcheck(
    services: dict[str, dict[str, Any]],
) -> None:
    assert services.keys() >= REQUIRED
    for name, service in services.items():
        assert service.get("image"), f"{name} names no image"
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
        assert service.get("restart") == "unless-stopped", name


def test_each_worker_is_a_plain_celery_worker_sized_as_the_policy_plans(
    services: dict[str, dict[str, Any]],
) -> None:
    policy = load_policy()
    for name, queue in WORKERS.items():
        argv = services[name]["command"]
        assert argv[:3] == ["celery", "-A", "workers.celery_app"], name
        assert "worker" in argv
        assert option(argv, "-Q", "--queues") == queue
        (planned,) = plan([queue], policy)
        assert option(argv, "--pool", "-P") == planned.pool, name
        assert int(option(argv, "--concurrency", "-c")) == planned.concurrency, name
        assert option(argv, "--hostname", "-n").startswith(f"{queue}@")
        env = services[name]["environment"]
        assert env["CIBOT_WORKER_METRICS_PORT"] == "9808"
        assert env["CIBOT_WORKER_METRICS_HOST"] == "0.0.0.0"
        assert "9808" in [str(port) for port in services[name]["expose"]]
    assert "PROMETHEUS_MULTIPROC_DIR" in services["worker-sandbox"]["environment"]


def test_cibot_services_run_as_the_image_user_and_workers_may_build_the_sandbox(
    services: dict[str, dict[str, Any]],
) -> None:
    """UID 10001, never root; workers get no capabilities but may make user namespaces."""
    for name in ("serve", *WORKERS):
        uid, _, gid = str(services[name]["user"]).partition(":")
        assert uid == gid == IMAGE_UID, f"{name} runs as {services[name]['user']}"
    for name in WORKERS:
        options = services[name]["security_opt"]
        assert "no-new-privileges:true" in options, name
        assert "seccomp=unconfined" in options and "apparmor=unconfined" in options, name
        assert services[name]["cap_drop"] == ["ALL"], name


def test_services_read_the_documented_settings(services: dict[str, dict[str, Any]]) -> None:
    """Every CIBOT_* name in compose.yaml is one bot/kernel/settings.py reads and README documents."""
    known = settings_variables()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in known - {
        f"CIBOT_{t}_{k}" for t in ("LOCAL", "MID", "FRONTIER") for k in ("MODEL", "API_BASE")
    }:
        assert f"`{name}`" in readme, f"README's configuration table lacks {name}"
    for service_name in ("serve", *WORKERS):
        env = services[service_name]["environment"]
        for key in env:
            if key.startswith("CIBOT_"):
                assert key in known, f"{service_name} sets {key}, which cibot never reads"
        assert env["CIBOT_REDIS_URL"] == "redis://redis:6379/0"
        assert env["CIBOT_DATABASE_URL"].startswith("postgresql+psycopg://cibot:")
    assert "CIBOT_WEBHOOK_SECRET" in services["serve"]["environment"]
    for name in WORKERS:
        env = services[name]["environment"]
        assert env["CIBOT_GITHUB_PRIVATE_KEY_FILE"] == "/run/secrets/github_app_key"
        assert "github_app_key" in services[name]["secrets"]


def environments(compose: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """Yield (service, variable, value) for every environment entry in compose.yaml."""
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            yield name, key, str(value)


def test_no_secret_value_is_written_in_compose(compose: dict[str, Any]) -> None:
    """Secrets come from the environment (.env) or files under ./secrets, never inline."""
    for service, key, value in environments(compose):
        if SECRET_NAME.search(key) and not key.endswith("_FILE"):
            assert REFERENCE.match(value), f"{service}: {key} is inlined ({value[:8]}...)"
        for password in URL_PASSWORD.findall(value):
            assert REFERENCE.match(password), f"{service}: {key} carries a literal password"
    for name, secret in compose["secrets"].items():
        assert set(secret) <= {"file", "environment"}, name
        if "file" in secret:
            assert secret["file"].startswith("${") or secret["file"].startswith("./secrets/")
    text = (ROOT / "compose.yaml").read_text(encoding="utf-8")
    assert "BEGIN" not in text and "ghp_" not in text and "sk-" not in text


def test_only_the_webhook_port_is_published_and_admin_uis_stay_on_loopback(
    services: dict[str, dict[str, Any]],
) -> None:
    published = {name: [str(p) for p in s.get("ports", [])] for name, s in services.items()}
    assert published["serve"] == ["${CIBOT_PUBLIC_BIND:-127.0.0.1}:8080:8080"]
    assert "8081" in [str(p) for p in services["serve"]["expose"]]
    for name in ("flower", "prometheus", "grafana"):
        assert published[name] and all(p.startswith("127.0.0.1:") for p in published[name])
    for name in ("redis", "postgres", *WORKERS):
        assert published[name] == [], f"{name} must not be published"
    env = services["serve"]["environment"]
    assert (env["CIBOT_ADMIN_HOST"], env["CIBOT_ADMIN_PORT"]) == ("0.0.0.0", "8081")
    assert REFERENCE.match(env["CIBOT_ADMIN_TOKEN"])


# ---- Prometheus and Grafana ---------------------------------------------------------------------


def exported_metrics() -> dict[str, set[str]]:
    """Return each metric family the bot and the workers export, with its sample names."""
    families = [*Metrics(lambda: 0.0).registry.collect(), *worker_metrics.REGISTRY.collect()]
    depth = worker_metrics.QueueDepth("redis://127.0.0.1:1/0", ["local"])
    families += list(depth.describe())
    depth.close()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    return {
        family.name: {family.name + s for s in suffixes.get(family.type, ("",))}
        for family in families
    }


def test_prometheus_scrapes_serve_with_the_token_and_every_worker(
    compose: dict[str, Any],
) -> None:
    config = load(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    serve = jobs["cibot-serve"]
    assert [t for c in serve["static_configs"] for t in c["targets"]] == ["serve:8081"]
    assert serve["authorization"]["type"] == "Bearer"
    assert serve["authorization"]["credentials_file"] == "/run/secrets/admin_token"
    assert "admin_token" in compose["services"]["prometheus"]["secrets"]
    assert compose["secrets"]["admin_token"] == {"environment": "CIBOT_ADMIN_TOKEN"}
    workers = jobs["cibot-workers"]["static_configs"]
    targets = {t: c.get("labels", {}) for c in workers for t in c["targets"]}
    assert set(targets) == {f"{name}:9808" for name in WORKERS}
    for labels in targets.values():
        assert "queue" not in labels  # it would shadow cibot_queue_depth's own label
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_the_grafana_dashboard_charts_every_exported_metric_and_nothing_else(
    compose: dict[str, Any],
) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "cibot.json").read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["panels"]
    exported = exported_metrics()
    samples = set().union(*exported.values())
    charted: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "cibot-prometheus", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"\bcibot_[a-z0-9_]+", target["expr"]))
            assert names, target["expr"]
            assert names <= samples, f"{panel['title']}: {names - samples} is not exported"
            charted |= names
    for family, names in exported.items():
        assert charted & names, f"no panel charts {family}"
    datasources = load(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")
    (source,) = datasources["datasources"]
    assert (source["uid"], source["type"], source["url"]) == (
        "cibot-prometheus",
        "prometheus",
        "http://prometheus:9090",
    )
    providers = load(DEPLOY / "grafana" / "provisioning" / "dashboards" / "cibot.yaml")
    (provider,) = providers["providers"]
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts


def test_promtool_accepts_the_config_and_every_dashboard_query(tmp_path: Path) -> None:
    """Where promtool is installed, check the scrape config, and each panel's PromQL as a rule."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus) to check PromQL")
    token = tmp_path / "admin_token"
    token.write_text("token\n", encoding="utf-8")
    text = (DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8")
    config = tmp_path / "prometheus.yml"
    config.write_text(text.replace("/run/secrets/admin_token", str(token)), encoding="utf-8")
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "cibot.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    rules = tmp_path / "rules.yml"
    groups = [
        {
            "name": "dashboard",
            "rules": [{"record": f"cibot:panel:{i}", "expr": e} for i, e in enumerate(exprs)],
        }
    ]
    rules.write_text(yaml.safe_dump({"groups": groups}), encoding="utf-8")
    for args in (["check", "config", str(config)], ["check", "rules", str(rules)]):
        done = subprocess.run(
            [promtool, *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr


# ---- the image ----------------------------------------------------------------------------------


def test_the_dockerfile_installs_the_hash_pinned_lock_and_runs_as_non_root() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in lines
    stages = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    assert len(stages) == 2
    text = "\n".join(lines)
    assert "pip install --require-hashes -r requirements.lock" in text
    assert "pip install --no-deps ." in text
    final = "\n".join(lines[stages[-1] :])
    users = [line.split()[1] for line in lines[stages[-1] :] if line.startswith("USER ")]
    assert users, "the final stage sets no USER"
    assert users[-1] == f"{IMAGE_UID}:{IMAGE_UID}"
    assert f"useradd --system --uid {IMAGE_UID}" in final
    install = next(line for line in lines[stages[-1] :] if "apt-get install" in line)
    assert "bubblewrap" in install.split(), "the image lacks bwrap, so no test could run"
    assert "COPY . " not in text  # only what the image installs goes in
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    for pattern in (".git", ".venv", ".env", "secrets", "*.pem", "tests"):
        assert pattern in ignored, f".dockerignore lacks {pattern}"


# ---- Kubernetes and systemd examples -----------------------------------------------------------


def test_the_kubernetes_example_runs_one_deployment_per_queue_without_secret_values() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "cibot.yaml").read_text()))
    assert "Secret" not in {doc["kind"] for doc in docs}
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {"cibot-serve", *(f"cibot-worker-{q}" for q in QUEUES)}
    policy = load_policy()
    for queue in QUEUES:
        spec = deployments[f"cibot-worker-{queue}"]["spec"]["template"]["spec"]
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == int(IMAGE_UID) != 0
        (container,) = spec["containers"]
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        # bwrap's user namespace and mounts: the default profiles refuse them.
        assert context["seccompProfile"]["type"] in ("Unconfined", "Localhost")
        assert context["appArmorProfile"]["type"] in ("Unconfined", "Localhost")
        argv = container["command"]
        assert argv[:3] == ["celery", "-A", "workers.celery_app"]
        assert option(argv, "-Q") == queue
        (planned,) = plan([queue], policy)
        assert (option(argv, "--pool"), int(option(argv, "--concurrency"))) == (
            planned.pool,
            planned.concurrency,
        )
        assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
        for entry in container["env"]:
            if SECRET_NAME.search(entry["name"]):
                assert "secretKeyRef" in entry["valueFrom"], entry["name"]
    webhook = next(
        d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "cibot-webhook"
    )
    assert [p["targetPort"] for p in webhook["spec"]["ports"]] == ["webhook"]


def test_the_systemd_units_never_loop_on_a_configuration_error() -> None:
    unit = (DEPLOY / "systemd" / "cibot-worker@.service").read_text(encoding="utf-8")
    serve = (DEPLOY / "systemd" / "cibot-serve.service").read_text(encoding="utf-8")
    for text in (unit, serve):
        assert "RestartPreventExitStatus=2" in text and "User=cibot" in text
    assert "celery -A workers.celery_app --quiet worker -Q %i" in unit
    assert "User=root" not in unit and "NoNewPrivileges=yes" in unit
    # bwrap makes an unprivileged user namespace: a unit that forbids them runs no tests.
    settings = [line.split("=", 1)[0] for line in unit.splitlines() if "=" in line]
    assert "RestrictNamespaces" not in settings and "PrivateUsers" not in settings
    policy = load_policy()
    ports = set()
    for queue in QUEUES:
        env = dict(
            line.split("=", 1)
            for line in (DEPLOY / "systemd" / f"worker-{queue}.env").read_text().splitlines()
            if line and not line.startswith("#")
        )
        (planned,) = plan([queue], policy)
        assert (env["WORKER_POOL"], int(env["WORKER_CONCURRENCY"])) == (
            planned.pool,
            planned.concurrency,
        )
        ports.add(env["CIBOT_WORKER_METRICS_PORT"])
    assert len(ports) == len(QUEUES), "workers on one host need their own metrics ports"


# ---- with Docker: compose config, then build and run ---------------------------------------------


def docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the docker client."""
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def first_line(result: subprocess.CompletedProcess[str]) -> str:
    """Return the first line of a failed command's output, for a skip reason."""
    text = (result.stderr or result.stdout).strip()
    return text.splitlines()[0] if text else f"exit code {result.returncode}"


def env_file(tmp_path: Path) -> Path:
    """Write a .env with throwaway values and a fresh App key, as an operator would."""
    from tests.fakes.github import generate_private_key_pem

    key = tmp_path / "github-app.pem"
    key.write_text(generate_private_key_pem(), encoding="utf-8")
    key.chmod(0o644)  # the image's UID 10001 reads it through the bind-mounted secret
    values = {
        "CIBOT_WEBHOOK_SECRET": "test-webhook-secret",
        "CIBOT_GITHUB_APP_ID": "12345",
        "CIBOT_GITHUB_PRIVATE_KEY_PATH": str(key),
        "CIBOT_LOCAL_API_BASE": "http://127.0.0.1:9/v1",
        "POSTGRES_PASSWORD": "test-postgres-password",
        "CIBOT_ADMIN_TOKEN": "test-admin-token",
        "FLOWER_BASIC_AUTH": "admin:test-flower",
        "GRAFANA_ADMIN_PASSWORD": "test-grafana",
    }
    path = tmp_path / ".env"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()), encoding="utf-8")
    return path


def compose_cli(env: Path, project: str, *args: str, timeout: float = 120) -> list[str]:
    """Return a docker compose command line for this checkout."""
    return [
        "docker",
        "compose",
        "--project-directory",
        str(ROOT),
        "-f",
        str(ROOT / "compose.yaml"),
        "--env-file",
        str(env),
        "-p",
        project,
        *args,
    ]


def require_compose() -> None:
    """Skip, saying why, when the docker client or its compose plugin is missing."""
    if shutil.which("docker") is None:
        pytest.skip("no docker client: install Docker to check compose.yaml with docker compose")
    version = docker("compose", "version")
    if version.returncode != 0:
        pytest.skip(
            f"no docker compose plugin: docker compose version failed ({first_line(version)})"
        )


def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    require_compose()
    done = subprocess.run(
        compose_cli(env_file(tmp_path), "cibot-config", "config", "--format", "json"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    resolved = json.loads(done.stdout)
    assert resolved["services"].keys() >= REQUIRED
    assert resolved["services"]["worker-local"]["command"][6] == "local"


@pytest.mark.slow
def test_the_image_builds_and_the_stack_comes_up_healthy(tmp_path: Path) -> None:
    if shutil.which("docker") is None:
        pytest.skip("no Docker engine: there is no docker client to ask")
    info = docker("info")
    if info.returncode != 0:
        pytest.skip(f"no Docker engine: docker info failed ({first_line(info)})")
    require_compose()
    env, project = env_file(tmp_path), f"cibot-test-{int(time.time())}"
    up = compose_cli(env, project, "up", "-d", "--build", "--wait", "--wait-timeout", "600")
    try:
        done = subprocess.run(up, capture_output=True, text=True, timeout=1800, check=False)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        ps = subprocess.run(
            compose_cli(env, project, "ps", "--format", "json"),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        rows = [json.loads(line) for line in ps.stdout.splitlines() if line.strip()]
        health = {row["Service"]: row.get("Health", "") for row in rows}
        assert health.keys() >= REQUIRED
        assert all(state == "healthy" for state in health.values()), health
    finally:
        subprocess.run(
            compose_cli(env, project, "down", "-v", "--remove-orphans"),
            capture_output=True,
            timeout=300,
            check=False,
        )
