"""The shipped stack: docker-compose.yml and the Collector config are consistent (no Docker here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _load(relative: str) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / relative).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_collector_pipelines_use_only_defined_components() -> None:
    """Every receiver, processor and exporter a pipeline names is defined in the config."""
    config = _load("collector-config/otel-collector.yaml")
    for name, pipeline in config["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"{name} uses undefined {kind[:-1]} {component}"
    assert set(config["service"]["extensions"]) <= set(config["extensions"])


def test_compose_services_reference_existing_files_and_services() -> None:
    """Volumes mount files that exist, and depends_on names services that exist."""
    compose = _load("docker-compose.yml")
    services = compose["services"]
    assert {"otel-collector", "jaeger", "postgres", "redis", "worker"} <= set(services)
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_workers_export_to_the_collector() -> None:
    """The worker's OTLP endpoint points at the Collector's OTLP/HTTP port."""
    compose = _load("docker-compose.yml")
    environment = compose["services"]["worker"]["environment"]
    assert environment["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    collector = _load("collector-config/otel-collector.yaml")
    assert collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")


def test_compose_commands_name_code_that_exists() -> None:
    """The worker class and the jobtrace subcommands the stack runs exist in this checkout."""
    import argparse
    import importlib
    import re

    from jobtrace.cli.commands import build_parser

    compose = _load("docker-compose.yml")
    commands = " ".join(str(s.get("command", "")) for s in compose["services"].values())
    for dotted in re.findall(r"--worker-class (\S+)", commands):
        module, _, name = dotted.rpartition(".")
        assert hasattr(importlib.import_module(module), name), dotted
    subcommands = set(re.findall(r"\bjobtrace (\w+)", commands))
    assert subcommands == {"db", "web"}
    (choices,) = [
        action.choices
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    ]
    assert subcommands <= set(choices)


def test_compose_publishes_ports_on_localhost_only() -> None:
    """The databases have default passwords: nothing is published on 0.0.0.0."""
    services = _load("docker-compose.yml")["services"]
    published = [(name, p) for name, s in services.items() for p in s.get("ports", [])]
    assert published
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_the_dashboard_gets_the_credentials_it_needs_off_loopback() -> None:
    """jobtrace web listens on 0.0.0.0 in its container, so the stack hands it a token."""
    dashboard = _load("docker-compose.yml")["services"]["dashboard"]
    assert "--host 0.0.0.0" in dashboard["command"]
    assert "JOBTRACE_WEB_TOKEN" in dashboard["environment"]
