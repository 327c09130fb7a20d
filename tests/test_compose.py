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
import redis
import yaml

from app.settings import from_env, variables
from stack import redis_users
from stack.launch import beat_command
from stack.services import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

SERVICES = {"localstack", "redis", "init", "worker", "files-worker", "beat", "web", "flower",
            "prometheus", "grafana"}
APP_SERVICES = {"init", "worker", "files-worker", "beat", "web", "flower"}
WORKERS = ("worker", "files-worker")
# Variables the app services may get that are not app settings.
EXTRAS = {
    "API_BIND",  # gunicorn's bind address (web/gunicorn.conf.py)
    "FLOWER_USER", "FLOWER_PASSWORD", "FLOWER_BASIC_AUTH",  # Flower's login
    "BROKER_URL",  # celery's --broker option, for Flower
}
# Settings that hold the Redis users' URLs: the API gets its own, the others the workers'.
REDIS_URLS = {"REDIS_URL", "CONTROL_URL", "API_REDIS_URL"}
API_CMD = ["gunicorn", "-c", "web/gunicorn.conf.py", "web:create_app()"]
# Dummy credentials so that `docker compose config` can interpolate the file.
DUMMY_LOGIN = {"FLOWER_USER": "test-user", "FLOWER_PASSWORD": "test-password",
               "REDIS_PASSWORD": "test-worker-password",
               "REDIS_API_PASSWORD": "test-api-password", "GRAFANA_PASSWORD": "test-grafana"}
REQUIRED = r"\$\{(\w+):\?[^}]*\}"


def interpolate(text: str, values: dict[str, str]) -> str:
    """The file with every required ${NAME:?message} replaced by values[NAME]."""
    return re.sub(REQUIRED, lambda match: values[match.group(1)], text)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(interpolate(COMPOSE_FILE.read_text(), DUMMY_LOGIN))


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
    settings = {name for name, _ in variables()} - REDIS_URLS
    shared = {key: value for key, value in compose["x-app-env"].items() if key in settings}
    for name in APP_SERVICES:
        env = services[name]["environment"]
        mine = {key: value for key, value in env.items() if key in settings}
        assert mine == shared, f"{name}'s settings differ from x-app-env"
        if name != "web":
            assert {key: env.get(key) for key in REDIS_URLS} == {
                key: compose["x-app-env"].get(key) for key in REDIS_URLS}


def redis_user(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.username, parts.password


def test_the_api_holds_only_the_read_only_redis_user(compose, services):
    web = from_env({k: str(v) for k, v in services["web"]["environment"].items()})
    for url in (web.redis_url, web.api_store_url, web.control_plane_url):
        assert redis_user(url) == (redis_users.API_USER, DUMMY_LOGIN["REDIS_API_PASSWORD"])
    assert DUMMY_LOGIN["REDIS_PASSWORD"] not in json.dumps(services["web"])
    for name in APP_SERVICES - {"web"}:
        env = from_env({k: str(v) for k, v in services[name]["environment"].items()})
        assert redis_user(env.redis_url) == (redis_users.WORKER_USER,
                                             DUMMY_LOGIN["REDIS_PASSWORD"])
    flower = services["flower"]["environment"]
    assert flower["BROKER_URL"] == flower["CONTROL_URL"]


def server_options(services) -> list[str]:
    command = services["redis"]["command"]
    assert command[0] == "redis-server"
    return command[1:]


def test_redis_users_are_the_stacks_and_need_the_passwords(services):
    options = server_options(services)
    secrets = {user: f">{DUMMY_LOGIN[var]}" for user, var in (
        (redis_users.WORKER_USER, "REDIS_PASSWORD"), (redis_users.API_USER, "REDIS_API_PASSWORD"))}
    expected = ["--user", "default", "off"]
    for user in redis_users.USER_RULES:
        expected += redis_users.user_args(user, secrets[user])
    start = options.index("--user")
    assert options[start:] == expected


def test_compose_redis_command_runs_and_locks_its_doors(services, tmp_path):
    # The image's redis-server with the file's own options (a free port, no data dir).
    server = RedisServer(free_port(), log_dir=tmp_path, extra_args=server_options(services))
    with server:
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port).ping()
        api = redis.Redis.from_url(services["web"]["environment"]["REDIS_URL"].replace(
            "redis:6379", f"127.0.0.1:{server.port}"))
        assert api.ping()
        with pytest.raises(redis.exceptions.NoPermissionError):
            api.set("global:stats", "x")
        # The healthcheck's own command, as the container runs it.
        check = services["redis"]["healthcheck"]["test"]
        assert check[0] == "CMD-SHELL"
        done = subprocess.run(
            ["sh", "-c", check[1].replace("redis-cli", f"redis-cli -p {server.port}")],
            env={**os.environ, **services["redis"]["environment"]})
        assert done.returncode == 0
        config = redis.Redis.from_url(
            compose_worker_url(services, server.port)).config_get("append*")
    assert (config["appendonly"], config["appendfsync"]) == ("yes", "always")


def test_redis_never_evicts(services):
    options = server_options(services)
    assert options[options.index("--maxmemory-policy") + 1] == "noeviction"


def compose_worker_url(services, port: int) -> str:
    url = services["worker"]["environment"]["REDIS_URL"]
    return url.replace("redis:6379", f"127.0.0.1:{port}")


def test_workers_and_api_restart_and_check_their_health(services):
    for name in (*WORKERS, "web"):
        assert services[name]["restart"] in ("unless-stopped", "always", "on-failure")
        assert services[name]["healthcheck"]["test"]
    for worker in WORKERS:
        words = argv(services[worker])
        node = words[words.index("-n") + 1]
        assert node.endswith("@%h")
        check = services[worker]["healthcheck"]["test"]
        assert check[0] == "CMD-SHELL"
        # Compose turns $$ into $: the shell then fills in the container's hostname, as %h.
        command = shlex.split(check[1].replace("$$HOSTNAME", "HOST"))
        assert command[:5] == ["celery", "-A", "tasks", "inspect", "ping"]
        assert command[command.index("-d") + 1] == node.replace("%h", "HOST")


def test_orders_and_files_run_on_workers_of_their_own(compose, services):
    """Issue 20: file steps cannot take the pool that counts orders."""
    settings = from_env({key: str(value) for key, value in compose["x-app-env"].items()})
    assert settings.files_enabled

    def consumed(name: str) -> list[str]:
        words = argv(services[name])
        assert words.count("-Q") == 1, f"{name} must name its queues with -Q"
        return words[words.index("-Q") + 1].split(",")

    assert consumed("worker") == list(settings.consumed_queue_urls)
    assert consumed("files-worker") == [settings.files_queue]
    nodes = {argv(services[name])[argv(services[name]).index("-n") + 1] for name in WORKERS}
    assert len(nodes) == len(WORKERS)
    # A files step's hard limit is half the files queue's visibility timeout.
    grace = services["files-worker"]["stop_grace_period"]
    assert int(grace.removesuffix("s")) > settings.files_execution_timeout // 2


def test_dependencies_order_the_startup(services):
    assert services["init"]["depends_on"]["localstack"]["condition"] == "service_healthy"
    for name in (*WORKERS, "web"):
        depends = services[name]["depends_on"]
        assert depends["init"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"
    for name in ("localstack", "redis", "web"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert "/health" in " ".join(services["web"]["healthcheck"]["test"])


def test_redis_persists_to_a_named_volume(compose, services):
    server = services["redis"]
    options = server_options(services)
    assert options[options.index("--appendonly") + 1] == "yes"
    assert options[options.index("--appendfsync") + 1] == "always"
    volume = server["volumes"][0].split(":")[0]
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
    for worker in WORKERS:
        assert argv(services[worker])[:4] == ["celery", "-A", "tasks", "worker"]
    assert argv(services["init"]) == ["python", "-m", "stack.init_queues", "&&",
                                      "python", "-m", "stack.init_files"]
    assert argv(services["web"]) == API_CMD


def test_one_beat_sends_the_schedule_as_make_run_does(services):
    beat = services["beat"]
    words = argv(beat)
    schedule = words[words.index("--schedule") + 1]
    assert words[1:] == beat_command(schedule)[1:]
    # Written by the image's non-root user: a directory it may write to.
    assert schedule.startswith("/tmp/")
    # A second beat would send every run twice.
    assert beat.get("deploy", {}).get("replicas", 1) == 1
    assert beat["restart"] == "unless-stopped"
    assert beat["depends_on"]["init"]["condition"] == "service_completed_successfully"


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
    # Every mention of a password is a required variable, never one with a default.
    for variable in ("FLOWER_PASSWORD", "REDIS_PASSWORD", "REDIS_API_PASSWORD", "GRAFANA_PASSWORD"):
        mentions = re.findall(r"\$\{%s([^}]*)\}" % variable, text)
        assert mentions and all(m.startswith(":?") for m in mentions), variable
        assert f"{variable}:-" not in text and f"{variable}-" not in text
    # No literal value for anything that looks like a credential.
    credential = r"^\s*-?\s*(\w*(?:PASSWORD|SECRET|TOKEN|BASIC_AUTH)\w*)\s*[:=]\s*(.+)$"
    for key, value in re.findall(credential, text, re.M | re.I):
        assert value.strip().strip("\"'").startswith("${"), f"{key} has a literal value"
    assert not re.search(r"--basic-auth=(?!\$)", text)


def test_flower_requires_basic_auth(services):
    flower = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["flower"]  # uninterpolated
    auth = flower["environment"].get("FLOWER_BASIC_AUTH", "") + " ".join(argv(flower))
    assert "FLOWER_USER" in auth and "FLOWER_PASSWORD" in auth
    words = argv(flower)
    assert "flower" in words and "--port=5555" in words
    assert any(str(port).endswith(":5555") for port in flower["ports"])


def mounts(service: dict) -> dict[str, Path]:
    """Container path -> file or directory of the repository, for each bind mount."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            found[target] = ROOT / source
    return found


def test_prometheus_loads_the_shipped_rules_and_scrapes_the_api(services, tmp_path):
    prometheus = services["prometheus"]
    files = mounts(prometheus)
    options = dict(arg.split("=", 1) for arg in prometheus["command"])
    config_file = files[options["--config.file"]]
    config = yaml.safe_load(config_file.read_text())
    assert [files[path] for path in config["rule_files"]] == [
        ROOT / "deploy" / "monitoring" / "rules.yml"]
    [job] = config["scrape_configs"]
    [target] = [t for group in job["static_configs"] for t in group["targets"]]
    host, port = target.split(":")
    assert host == "web" and services["web"]["ports"][0].endswith(f":{port}")
    assert all(p.startswith("127.0.0.1:") for p in prometheus["ports"])
    # The same file, its rule paths made local, passes promtool (Debian's prometheus package).
    if shutil.which("promtool"):
        config["rule_files"] = [str(files[path]) for path in config["rule_files"]]
        local = tmp_path / "prometheus.yml"
        local.write_text(yaml.safe_dump(config))
        checked = subprocess.run(["promtool", "check", "config", str(local)],
                                 capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_grafana_provisions_prometheus_and_the_generated_dashboard(services):
    grafana = services["grafana"]
    files = mounts(grafana)
    provisioning = files["/etc/grafana/provisioning"]
    [source] = yaml.safe_load(
        (provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    port = services["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert source["type"] == "prometheus" and source["url"] == f"http://prometheus:{port}"
    [provider] = yaml.safe_load(
        (provisioning / "dashboards" / "order-pipeline.yml").read_text())["providers"]
    dashboards = files[provider["options"]["path"]]
    assert dashboards == ROOT / "deploy" / "monitoring" / "grafana" / "dashboards"
    assert json.loads((dashboards / "orders-pipeline.json").read_text())["uid"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dashboards / Path(home).name).is_file() and Path(home).parent == Path(
        provider["options"]["path"])
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert all(p.startswith("127.0.0.1:") for p in grafana["ports"])


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
    # Without any one of them, compose refuses: there is no default to fall back on.
    for missing in DUMMY_LOGIN:
        env = {**base, **{k: v for k, v in DUMMY_LOGIN.items() if k != missing}}
        done = subprocess.run(run, env=env, capture_output=True, text=True)
        assert done.returncode != 0 and f"set {missing}" in done.stderr, (missing, done.stderr)
