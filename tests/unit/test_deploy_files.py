"""The Dockerfile and docker-compose.yml refer to what exists (docker is not run here)."""

from __future__ import annotations

from pathlib import Path

import yaml

from jobsys.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_the_dockerfile_copies_files_that_exist() -> None:
    lines = (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
    copied = [part for line in lines if line.startswith("COPY ") for part in line.split()[1:-1]]

    assert copied, "the Dockerfile copies nothing"
    assert [name for name in copied if not (ROOT / name).exists()] == []


def test_compose_runs_the_demo_and_a_worker_with_commands_jobsys_has() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]

    assert {"rabbitmq", "demo", "worker"} <= services.keys()
    for name in ("demo", "worker"):
        service = services[name]
        assert service["build"] == "."
        assert service["command"][0] in main.commands
        assert service["environment"]["JOBSYS_URL"].startswith("amqp://")
    worker = services["worker"]["command"]
    topology = worker[worker.index("--topology") + 1]
    assert (ROOT / topology).is_file()
    module, _, attribute = worker[1].partition(":")
    assert hasattr(__import__(module, fromlist=[attribute]), attribute)
