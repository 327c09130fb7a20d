"""Static checks of docker-compose.yml and the Dockerfile (no Docker engine needed).

They catch the drift that only shows when the stack is started: a misspelt setting,
a command pointing at a module that was renamed, a password committed to the repo.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from app.settings import from_env, variables

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

SERVICES = {"localstack", "redis", "init", "worker", "web", "flower"}
APP_SERVICES = {"init", "worker", "web", "flower"}
# Variables the app services may get that are not app settings.
EXTRAS = {
    "API_BIND",  # gunicorn's bind address (web/gunicorn.conf.py)
    "FLOWER_USER", "FLOWER_PASSWORD", "FLOWER_BASIC_AUTH",  # Flower's login
}
API_CMD = ["gunicorn", "-c", "web/gunicorn.conf.py", "web:create_app()"]
# Dummy credentials so that `docker compose config` can interpolate the file.
DUMMY_LOGIN = {"FLOWER_USER": "test-user", "FLOWER_PASSWORD": "test-password"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def image_cmd() -> list[str]:
    """The Dockerfile's last CMD, which must be in exec (JSON) form."""
    cmds = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith("CMD ")]
    assert cmds, "Dockerfile has no CMD"
    return json.loads(cmds[-1][len("CMD "):])


def argv(service: dict) -> list[str]:
    """The command a service runs, unwrapped from `sh -c '...'`."""
    command = service.get("command", image_cmd())
    words = shlex.split(command) if isinstance(command, str) else list(command)
    if words[:2] in (["sh", "-c"], ["/bin/sh", "-c"]):
        words = shlex.split(words[2])
    return words[1:] if words[:1] == ["exec"] else words


def test_expected_services(services):
    assert set(services) == SERVICES


def test_app_services_share_one_image(services):
    images = {services[name].get("image") for name in APP_SERVICES}
    assert len(images) == 1 and None not in images
    assert all(services[name].get("build") for name in APP_SERVICES)


def test_worker_has_two_replicas(services):
    assert services["worker"]["deploy"]["replicas"] == 2
    # A fixed container name would make a second replica impossible.
    assert "container_name" not in services["worker"]


def test_app_env_variables_are_real_settings(compose, services):
    settings = {name for name, _ in variables()}
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert isinstance(env, dict), f"{name}: environment must be a mapping"
        unknown = set(env) - settings - EXTRAS
        assert not unknown, f"{name} gets variables that are no setting: {sorted(unknown)}"
    # The shared values parse (types, policies) and point at the compose services.
    shared = {key: str(value) for key, value in compose["x-app-env"].items()}
    parsed = from_env(shared)
    assert urlsplit(parsed.redis_url).hostname in services
    assert urlsplit(parsed.control_plane_url).hostname in services
    assert urlsplit(parsed.sqs_endpoint_url).hostname in services
    assert (parsed.orders_queue, parsed.dlq_name) == ("orders-queue", "orders-queue-dlq")


def test_app_services_get_the_same_settings(compose, services):
    settings = {name for name, _ in variables()}
    shared = compose["x-app-env"]
    for name in APP_SERVICES:
        env = services[name]["environment"]
        mine = {key: value for key, value in env.items() if key in settings}
        assert mine == shared, f"{name}'s settings differ from x-app-env"


def test_dependencies_order_the_startup(services):
    assert services["init"]["depends_on"]["localstack"]["condition"] == "service_healthy"
    for name in ("worker", "web"):
        depends = services[name]["depends_on"]
        assert depends["init"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"
    for name in ("localstack", "redis", "web"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert "/health" in " ".join(services["web"]["healthcheck"]["test"])


def test_redis_persists_to_a_named_volume(compose, services):
    redis = services["redis"]
    assert "--appendonly" in redis["command"]
    volume = redis["volumes"][0].split(":")[0]
    assert volume in compose["volumes"]


def test_commands_refer_to_existing_modules(services):
    seen = set()
    for name in APP_SERVICES:
        words = argv(services[name])
        program = words[0]
        seen.add(program)
        if program == "celery":
            target = words[words.index("-A") + 1]
            assert importlib.util.find_spec(target), f"{name}: no module {target}"
        elif program == "python":
            target = words[words.index("-m") + 1]
            assert importlib.util.find_spec(target), f"{name}: no module {target}"
        elif program == "gunicorn":
            config = words[words.index("-c") + 1]
            assert (ROOT / config).is_file(), f"{name}: no file {config}"
            target = words[-1].split(":")[0]
            assert importlib.util.find_spec(target), f"{name}: no module {target}"
        else:
            pytest.fail(f"{name} runs {program}, which this test does not know")
    assert seen == {"celery", "python", "gunicorn"}
    assert argv(services["worker"])[:4] == ["celery", "-A", "tasks", "worker"]
    assert argv(services["init"]) == ["python", "-m", "stack.init_queues", "&&",
                                      "python", "-m", "stack.init_files"]
    assert argv(services["web"]) == API_CMD


def test_dockerfile_runs_the_api_as_non_root():
    assert image_cmd() == API_CMD
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert "API_BIND=0.0.0.0:8000" in text
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert "-c requirements/constraints.txt ." in text


def test_no_secret_in_compose_file():
    text = COMPOSE_FILE.read_text()
    # Every mention of the password is a required variable, never one with a default.
    mentions = re.findall(r"\$\{FLOWER_PASSWORD([^}]*)\}", text)
    assert mentions and all(m.startswith(":?") for m in mentions)
    assert "FLOWER_PASSWORD:-" not in text and "FLOWER_PASSWORD-" not in text
    # No literal value for anything that looks like a credential.
    credential = r"^\s*-?\s*(\w*(?:PASSWORD|SECRET|TOKEN|BASIC_AUTH)\w*)\s*[:=]\s*(.+)$"
    for key, value in re.findall(credential, text, re.M | re.I):
        assert value.strip().strip("\"'").startswith("${"), f"{key} has a literal value"
    assert not re.search(r"--basic-auth=(?!\$)", text)


def test_flower_requires_basic_auth(services):
    flower = services["flower"]
    auth = flower["environment"].get("FLOWER_BASIC_AUTH", "") + " ".join(argv(flower))
    assert "FLOWER_USER" in auth and "FLOWER_PASSWORD" in auth
    words = argv(flower)
    assert "flower" in words and "--port=5555" in words
    assert any(str(port).endswith(":5555") for port in flower["ports"])


def compose_cli() -> list[str] | None:
    """`docker compose` (v2 plugin), else the standalone `docker-compose`, else None."""
    if shutil.which("docker"):
        if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
            return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.mark.skipif(compose_cli() is None, reason="needs docker compose (no engine needed)")
def test_docker_compose_config_accepts_the_file(tmp_path):
    # `config` only parses and interpolates: it needs the compose CLI, not an engine.
    base = {k: v for k, v in os.environ.items() if k not in DUMMY_LOGIN}
    # An empty env file, so that a developer's .env cannot supply the login.
    empty = tmp_path / "empty.env"
    empty.write_text("")
    run = [*compose_cli(), "--env-file", str(empty), "-f", str(COMPOSE_FILE), "config", "--quiet"]
    done = subprocess.run(run, env={**base, **DUMMY_LOGIN}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # Without the login, compose refuses: there is no default password to fall back on.
    done = subprocess.run(run, env=base, capture_output=True, text=True)
    assert done.returncode != 0 and "FLOWER_" in done.stderr
