"""deploy/kubernetes validated offline, and its numbers checked against the code they follow.

Core kinds with kubernetes-validate (strict: an unknown field is an error), KEDA's
ScaledObject and TriggerAuthentication with check-jsonschema and the schemas in
deploy/kubernetes/schemas/.
"""
from __future__ import annotations

import inspect
import re
import subprocess
from dataclasses import fields

import kubernetes_validate
import pytest
import yaml

from app.settings import Settings, from_env
from deployment import BIN, DEPLOY, TEMPLATE, stack_env
from tasks.celery import create_celery
from tasks.file_tasks import StepTask
from tasks.names import FILES_MAINTAIN, FILES_SWEEP
from tasks.sqs.receive import SQS_MAX_MESSAGES
from tasks.sqs.settle import wait_for_settlements

MANIFESTS = DEPLOY / "kubernetes"
SCHEMAS = MANIFESTS / "schemas"
CORE = ("config.yaml", "serviceaccounts.yaml", "worker.yaml", "api.yaml", "flower.yaml",
        "beat.yaml")
KEDA = {"keda-scaledobject.yaml": "keda-scaledobject-v1alpha1.json",
        "keda-triggerauthentication.yaml": "keda-triggerauthentication-v1alpha1.json"}
KUBERNETES_VERSION = "1.37.0"


def documents(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc]


def resource(kind: str, name: str) -> dict:
    """The one manifest of this kind and name."""
    [found] = [doc for file in (*CORE, *KEDA) for doc in documents(file)
               if doc["kind"] == kind and doc["metadata"]["name"] == name]
    return found


def container(deployment: str) -> dict:
    [only] = resource("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return only


def test_every_file_is_validated():
    assert {p.name for p in MANIFESTS.glob("*.yaml")} == {*CORE, *KEDA}


def test_core_kinds_pass_kubernetes_validate_strictly():
    checked = subprocess.run([BIN / "kubernetes-validate", "--strict", "--quiet", "-k",
                              KUBERNETES_VERSION, *(str(MANIFESTS / name) for name in CORE)],
                             capture_output=True, text=True, timeout=300)
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")


def test_kubernetes_validate_refuses_a_misspelt_field():
    deployment = resource("Deployment", "order-pipeline-worker")
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 480
    with pytest.raises(kubernetes_validate.ValidationError, match="terminationGracePeriod"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("manifest", sorted(KEDA))
def test_keda_resources_pass_check_jsonschema(manifest):
    checked = subprocess.run([BIN / "check-jsonschema", "--schemafile",
                              str(SCHEMAS / KEDA[manifest]), str(MANIFESTS / manifest)],
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_check_jsonschema_refuses_a_number_where_keda_reads_a_string(tmp_path):
    scaled = resource("ScaledObject", "order-pipeline-worker")
    scaled["spec"]["triggers"][0]["metadata"]["queueLength"] = 60
    broken = tmp_path / "scaledobject.yaml"
    broken.write_text(yaml.safe_dump(scaled))
    checked = subprocess.run([BIN / "check-jsonschema", "--schemafile",
                              str(SCHEMAS / KEDA["keda-scaledobject.yaml"]), str(broken)],
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 1 and "queueLength" in checked.stdout, checked.stdout


def consumed(deployment: str) -> list[str]:
    """The queues a worker Deployment's -Q names, $(VARIABLE)s filled in from the ConfigMap."""
    command = container(deployment)["command"]
    config = resource("ConfigMap", "order-pipeline")["data"]
    return [re.sub(r"\$\((\w+)\)", lambda m: config[m.group(1)], name)
            for name in command[command.index("-Q") + 1].split(",")]


def test_orders_and_files_run_on_workers_of_their_own():
    settings = Settings()
    assert consumed("order-pipeline-worker") == list(settings.consumed_queue_urls)
    assert consumed("order-pipeline-files-worker") == [settings.files_queue]


def test_queue_length_is_what_one_worker_pod_holds():
    settings = Settings()
    celery = create_celery(settings).conf
    command = container("order-pipeline-worker")["command"]
    concurrency = int(command[command.index("--concurrency") + 1])
    # Celery's prefetch, plus ten per receive chain: one chain per consumed queue.
    held = (concurrency * celery["worker_prefetch_multiplier"]
            + SQS_MAX_MESSAGES * len(consumed("order-pipeline-worker")))
    [trigger] = resource("ScaledObject", "order-pipeline-worker")["spec"]["triggers"]
    assert trigger["type"] == "aws-sqs-queue"
    assert trigger["metadata"]["queueLength"] == str(held)
    config = resource("ConfigMap", "order-pipeline")["data"]
    assert trigger["metadata"]["queueURL"] == config["ORDERS_QUEUE_URL"]
    assert trigger["metadata"]["awsRegion"] == config["AWS_REGION"]
    scaled = resource("ScaledObject", "order-pipeline-worker")["spec"]
    assert scaled["scaleTargetRef"]["name"] == "order-pipeline-worker"
    assert trigger["authenticationRef"]["name"] == resource(
        "TriggerAuthentication", "order-pipeline-queue-depth")["metadata"]["name"]


def test_the_grace_period_outlasts_the_warm_stop():
    settings = Settings()
    orders_task = create_celery(settings).conf["task_time_limit"]
    files_step = settings.files_execution_timeout // 2
    assert files_step == StepTask.time_limit.fget(type("Step", (), {"settings": settings})())
    settling = inspect.signature(wait_for_settlements).parameters["timeout"].default
    spec = resource("Deployment", "order-pipeline-worker")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > orders_task + settling
    files = resource("Deployment", "order-pipeline-files-worker")["spec"]["template"]["spec"]
    assert files["terminationGracePeriodSeconds"] > files_step + settling
    # KEDA's scale-down waits at least as long before removing a pod.
    assert resource("ScaledObject", "order-pipeline-worker")["spec"]["cooldownPeriod"] >= \
        spec["terminationGracePeriodSeconds"]


def test_the_config_is_the_stacks_outputs_in_settings_names():
    variables = {f.name.upper() for f in fields(Settings)}
    config = resource("ConfigMap", "order-pipeline")["data"]
    outputs = {stack_env.variable_name(key)
               for key in re.findall(r"^  (\w+):\n    Description:",
                                     TEMPLATE.read_text().split("\nOutputs:\n")[1], re.M)}
    assert set(config) <= variables, set(config) - variables
    assert outputs <= set(config), outputs - set(config)
    assert config["SQS_ENDPOINT_URL"] == ""  # real AWS, not the LocalStack default


def test_probes_and_identities():
    api = container("order-pipeline-api")
    assert api["readinessProbe"]["httpGet"]["path"] == "/health"
    for deployment, node in (("order-pipeline-worker", "worker"),
                             ("order-pipeline-files-worker", "files")):
        worker = container(deployment)
        probe = " ".join(worker["livenessProbe"]["exec"]["command"])
        assert f"inspect ping -d {node}@$HOSTNAME" in probe and f"{node}@%h" in worker["command"]
    for deployment, account in (("order-pipeline-worker", "order-pipeline-worker"),
                                ("order-pipeline-files-worker", "order-pipeline-worker"),
                                ("order-pipeline-api", "order-pipeline-api")):
        pod = resource("Deployment", deployment)["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == account
        annotations = resource("ServiceAccount", account)["metadata"]["annotations"]
        assert annotations["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert resource("Service", "order-pipeline-api")["spec"]["selector"] == resource(
        "Deployment", "order-pipeline-api")["spec"]["selector"]["matchLabels"]
    for name in ("order-pipeline-worker", "order-pipeline-files-worker", "order-pipeline-api"):
        assert resource("PodDisruptionBudget", name)["spec"]["selector"] == resource(
            "Deployment", name)["spec"]["selector"]


def test_one_beat_sends_the_files_upkeep_on_the_configs_settings():
    deployment = resource("Deployment", "order-pipeline-beat")["spec"]
    # One beat, and never two at once during a rollout: each would send every run.
    assert (deployment["replicas"], deployment["strategy"]) == (1, {"type": "Recreate"})
    assert "PodDisruptionBudget" not in {doc["kind"] for doc in documents("beat.yaml")}
    beat = container("order-pipeline-beat")
    command = beat["command"]
    assert command[:4] == ["celery", "-A", "tasks", "beat"]
    schedule = command[command.index("--schedule") + 1]
    [mount] = beat["volumeMounts"]
    volumes = {v["name"]: v for v in deployment["template"]["spec"]["volumes"]}
    assert schedule.startswith(mount["mountPath"] + "/") and "emptyDir" in volumes[mount["name"]]
    # The ConfigMap alone (no Redis Secret): what the schedule is made of.
    assert beat["envFrom"] == [{"configMapRef": {"name": "order-pipeline"}}]
    config = resource("ConfigMap", "order-pipeline")["data"]
    settings = from_env(config)
    sent = create_celery(settings).conf["beat_schedule"]
    assert {entry["task"]: entry["schedule"] for entry in sent.values()} == {
        FILES_SWEEP: settings.files_sweep_interval,
        FILES_MAINTAIN: settings.files_maintain_interval}
