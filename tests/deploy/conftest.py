"""Helpers for the deploy tests: the Debian tools they run for real, and the shipped deploy files."""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket

import pytest

from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "cnn-serving.json"
SETUP_HINT = "run scripts/setup.sh --system (installs Debian's {pkg} package)"


def need(binary: str, package: str) -> str:
    """The path of a Debian tool the deploy tests run for real; a missing one fails the test loudly."""
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} not found: {SETUP_HINT.format(pkg=package)}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_render():
    """deploy/prometheus/render.py (a script, not a package) as a module."""
    spec = importlib.util.spec_from_file_location("deploy_prometheus_render", PROMETHEUS_DIR / "render.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_targets() -> list[tuple[str, dict]]:
    """(panel title, target) for every query target of every panel (rows included)."""
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append((p["title"], t))
            walk(p.get("panels", []))

    walk(dashboard()["panels"])
    return out


@pytest.fixture(scope="session")
def promtool() -> str:
    return need("promtool", "prometheus")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return need("prometheus", "prometheus")
