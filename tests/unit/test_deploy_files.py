"""The Dockerfile, docker-compose.yml and the Kubernetes manifests in deploy/k8s/ say what jobsys
can do: every command and option they give parses with the CLI, the drain fits in the time the
orchestrator allows, the probes reach what the worker serves, KEDA watches the queues the worker
consumes, and no broker URL with a password is written into any of them.

Docker and Kubernetes are not run here; tests/integration/test_deploy_worker_command.py runs the
manifests' commands themselves against a broker.
"""

from __future__ import annotations

import importlib
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from jobsys.app import App
from jobsys.cli import main
from jobsys.consume.options import WorkerOptions
from jobsys.consume.pools import plan_pools
from jobsys.duration import parse_duration_s
from jobsys.observe.prometheus import LIVE_PATH, READY_PATH
from jobsys.topology.entities import desired_entities
from jobsys.topology.loader import load_topology

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
#: What the worker needs after the drain and the shutdown hooks: closing its channels and the
#: connection (a close-ok per channel, bounded at 2 s for a blocked connection).
CLOSE_MARGIN_S = 10.0
#: A URL with credentials in it: scheme://user:password@host.
CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]*:[^/\s@]*@", re.I)


# -- reading the files ------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, stage by stage, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    joined = re.sub(r"\\\n", " ", text)
    stages: list[list[tuple[str, str]]] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), rest.strip()))
    return stages


def k8s_documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    return docs


def k8s(kind: str, name: str) -> dict[str, Any]:
    [found] = [d for d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8")))


def worker_container() -> dict[str, Any]:
    [container] = k8s("Deployment", "jobsys-worker")["spec"]["template"]["spec"]["containers"]
    return dict(container)


def jobsys_commands() -> Iterator[tuple[str, list[str]]]:
    """Every jobsys command line the image is run with: (where, arguments after `jobsys`)."""
    for name, service in compose()["services"].items():
        if service.get("build") == ".":
            yield f"docker-compose.yml:{name}", list(service["command"])
    for doc in k8s_documents():
        for container in _containers(doc):
            yield f"deploy/k8s:{doc['metadata']['name']}", list(container["args"])


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {})
    return list(spec.get("template", {}).get("spec", {}).get("containers", []))


def parse(args: list[str]) -> tuple[click.Command, click.Context]:
    """Parse ``jobsys ARGS`` as the CLI would (types, ranges and callbacks included)."""
    command: click.Command = main
    parent = click.Context(main, info_name="jobsys")
    rest = list(args)
    while isinstance(command, click.Group):
        name, *rest = rest
        found = command.get_command(parent, name)
        assert found is not None, f"jobsys has no command {name!r}"
        command = found
        if isinstance(command, click.Group):
            parent = click.Context(command, info_name=name, parent=parent)
    return command, command.make_context(command.name, rest, parent=parent)


def worker_args(args: list[str]) -> dict[str, Any]:
    command, ctx = parse(args)
    assert command.name == "worker"
    return dict(ctx.params)


def the_app(target: str) -> App:
    module, _, attribute = target.partition(":")
    app = getattr(importlib.import_module(module), attribute)
    assert isinstance(app, App)
    return app


# -- the image --------------------------------------------------------------------------------


def test_the_dockerfile_copies_files_that_exist() -> None:
    copied = [
        part
        for stage in dockerfile_stages()
        for keyword, rest in stage
        if keyword == "COPY" and not rest.startswith("--from")
        for part in rest.split()[:-1]
    ]
    assert copied, "the Dockerfile copies nothing"
    assert [name for name in copied if not (ROOT / name).exists()] == []


def test_the_image_runs_the_jobsys_command_as_a_numeric_non_root_user() -> None:
    final = dict(dockerfile_stages()[-1])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "scripts"
    ]
    [program] = yaml.safe_load(final["ENTRYPOINT"])
    module, _, function = scripts[program].partition(":")
    assert getattr(importlib.import_module(module), function) is main
    user, _, group = final["USER"].partition(":")
    assert user.isdigit() and int(user) != 0, "a numeric uid lets runAsNonRoot check it"
    assert group.isdigit() and int(group) != 0


def test_the_image_installs_the_extras_its_commands_use() -> None:
    installs = " ".join(
        rest for stage in dockerfile_stages() for keyword, rest in stage if keyword == "RUN"
    )
    [extras] = re.findall(r"'\.\[([a-z,]+)\]'", installs)
    known = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    assert set(extras.split(",")) <= known.keys()
    if any("--metrics-port" in args for _, args in jobsys_commands()):
        assert "prometheus" in extras.split(",")


def test_no_broker_url_or_password_is_baked_into_the_image() -> None:
    for stage in dockerfile_stages():
        for keyword, rest in stage:
            if keyword in ("ENV", "ARG", "LABEL"):
                assert "JOBSYS_URL" not in rest and "PASSWORD" not in rest.upper(), rest
            assert not CREDENTIALS.search(rest), rest


# -- commands and options ---------------------------------------------------------------------


@pytest.mark.parametrize(("where", "args"), list(jobsys_commands()), ids=lambda v: str(v))
def test_every_jobsys_command_the_deployments_run_parses_with_the_cli(
    where: str, args: list[str]
) -> None:
    _, ctx = parse(args)
    topology = ctx.params.get("topology_file")
    if topology is not None:
        # The image's working directory holds topology/ as the repository does.
        load_topology(ROOT / topology)
    if "app_target" in ctx.params:
        the_app(ctx.params["app_target"])


def test_a_command_with_an_option_jobsys_lacks_is_refused_by_the_same_parse() -> None:
    with pytest.raises(click.NoSuchOption):
        parse(["worker", "jobsys.cli.demo_app:app", "--topology", "t.yaml", "--drain", "30s"])
    with pytest.raises(click.BadParameter):
        parse(["worker", "jobsys.cli.demo_app:app", "--topology", "t.yaml", "--grace", "soon"])


# -- stopping ---------------------------------------------------------------------------------


def _stop_budget_s(params: dict[str, Any]) -> float:
    hooks = len(the_app(params["app_target"]).shutdown_hooks)
    # A deployment file is a template for apps with hooks: reserve at least one.
    return float(params["grace"] + params["hook_timeout"] * max(1, hooks) + CLOSE_MARGIN_S)


def test_the_worker_drains_within_kubernetes_termination_grace_period() -> None:
    params = worker_args(worker_container()["args"])
    pod = k8s("Deployment", "jobsys-worker")["spec"]["template"]["spec"]
    assert _stop_budget_s(params) <= pod["terminationGracePeriodSeconds"]


def test_the_worker_drains_within_compose_stop_grace_period() -> None:
    service = compose()["services"]["worker"]
    params = worker_args(service["command"])
    assert _stop_budget_s(params) <= parse_duration_s(service["stop_grace_period"])


# -- probes -----------------------------------------------------------------------------------


def test_the_kubernetes_probes_ask_the_worker_s_own_listener_for_its_probe_paths() -> None:
    container = worker_container()
    params = worker_args(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert params["metrics_bind"] not in ("127.0.0.1", "localhost", "::1"), (
        "the kubelet connects to the pod's address, not its loopback"
    )
    for probe, path in (("readinessProbe", READY_PATH), ("livenessProbe", LIVE_PATH)):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert ports[get["port"]] == params["metrics_port"]


def test_the_compose_healthcheck_asks_the_worker_s_listener_whether_it_is_ready() -> None:
    service = compose()["services"]["worker"]
    params = worker_args(service["command"])
    check = " ".join(service["healthcheck"]["test"])
    assert f"http://127.0.0.1:{params['metrics_port']}{READY_PATH}" in check


# -- secrets ----------------------------------------------------------------------------------


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def test_the_manifests_hold_no_secret_and_take_broker_urls_from_one() -> None:
    documents = k8s_documents()
    assert [d["kind"] for d in documents if d["kind"] == "Secret"] == []
    assert [s for d in documents for s in _strings(d) if CREDENTIALS.search(s)] == []
    for doc in documents:
        for container in _containers(doc):
            env = {item["name"]: item for item in container.get("env", [])}
            assert "JOBSYS_URL" in env
            for name in ("JOBSYS_URL", "JOBSYS_MANAGEMENT_URL"):
                if name in env:
                    assert "value" not in env[name]
                    assert env[name]["valueFrom"]["secretKeyRef"]["name"]
    auth = k8s("TriggerAuthentication", "jobsys-broker")
    assert {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]} == {"host"}
    for trigger in k8s("ScaledObject", "jobsys-worker")["spec"]["triggers"]:
        assert not {"host", "password", "username"} & trigger["metadata"].keys()


def test_the_secrets_the_manifests_read_are_the_ones_the_docs_create() -> None:
    wanted: set[tuple[str, str]] = set()
    for doc in k8s_documents():
        for container in _containers(doc):
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    wanted.add((ref["name"], ref["key"]))
        for ref in doc.get("spec", {}).get("secretTargetRef", []):
            wanted.add((ref["name"], ref["key"]))
    created: set[tuple[str, str]] = set()
    docs = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8").replace("\\\n", " ")
    for command in re.findall(r"kubectl create secret generic [^\n]+", docs):
        words = shlex.split(command)
        name = words[4]
        for word in words[5:]:
            if word.startswith(("--from-file=", "--from-literal=")):
                created.add((name, word.split("=", 2)[1]))
    assert wanted, "the manifests read no secret"
    assert wanted <= created


def test_compose_writes_only_the_broker_image_s_own_default_user_inline() -> None:
    found = {m for s in _strings(compose()) for m in CREDENTIALS.findall(s)}
    assert {re.sub(r"^[a-z]+://", "", m) for m in found} <= {"guest:guest@"}


def test_compose_says_where_its_broker_version_is_not_the_tested_one() -> None:
    image = compose()["services"]["rabbitmq"]["image"]
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    if not image.startswith("rabbitmq:3.10.8"):
        assert "NOT been tested" in text and "rabbitmq:3.10.8-management" in text


# -- autoscaling ------------------------------------------------------------------------------


def test_keda_scales_the_worker_on_exactly_the_queues_it_consumes() -> None:
    scaled = k8s("ScaledObject", "jobsys-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "jobsys-worker"
    params = worker_args(worker_container()["args"])
    loaded = load_topology(ROOT / params["topology_file"])
    consumed = {
        pool.queue
        for pool in plan_pools(
            the_app(params["app_target"]), loaded.topology, WorkerOptions(queues=params["queues"])
        )
    }
    every_queue = {spec.name for spec in desired_entities(loaded.topology).queues}
    watched: set[str] = set()
    for trigger in scaled["spec"]["triggers"]:
        meta = trigger["metadata"]
        assert trigger["type"] == "rabbitmq"
        assert trigger["authenticationRef"]["name"] == "jobsys-broker"
        assert meta["mode"] == "QueueLength" and int(meta["value"]) > 0
        if meta.get("useRegex") == "true":
            assert meta["protocol"] == "http", "KEDA reads a regex only over the management API"
            watched |= {q for q in every_queue if re.search(meta["queueName"], q)}
        else:
            watched.add(meta["queueName"])
    assert watched == consumed, "dead-letter or delay queues would keep workers scaled up"
