"""A Ray cluster on this machine, with llmviz-server deployed on it by Ray's CLI.

Meant to run inside network and PID namespaces of its own (`isolated` gives the command;
tests/live/test_ray_serve.py and bench/ray_serve.py use it): Ray then binds loopback only,
its fixed ports (6379, 8265, 8000) clash with nothing, and `ray stop` sees only this
cluster's processes. By default two nodes of one CPU each, so that Serve places one
replica (`num_cpus: 1`) on each.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import requests

from tests.support.server import REPO, wait_for

BIN = Path(sys.executable).parent  # the virtualenv's `ray` and `serve`
HEAD = "127.0.0.1:6379"
DASHBOARD = "http://127.0.0.1:8265"
PORT = 8000  # Serve's proxy, on each node; alone in this namespace
OBJECT_STORE_BYTES = 100 * 1024 * 1024  # Ray's smallest is 75 MiB; the app puts nothing there
# Ray's own settings for the CLI and every process it starts.
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray turns token authentication on by itself where ~/.ray/auth_token exists (a local
    # `serve run` writes one); the CLI then needs the token too. Loopback only here: off.
    "RAY_AUTH_MODE": "disabled",
    # Application metrics leave a worker every 10 s by default; the test reads them.
    "RAY_metrics_report_interval_ms": "1000",
}


# Set in the namespaces `isolated` makes: code that needs them checks for it.
NAMESPACE_MARK = "LLMVIZ_TEST_NAMESPACE"


def isolated(*command: str) -> list[str]:
    """`command` in network and PID namespaces of its own, with loopback up: when it ends,
    the kernel ends every process left in them (a Ray cluster included). `sh`, not the
    command, is the namespaces' first process, the one the kernel hands orphans to."""
    return [
        "unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child",
        "sh", "-c", f'ip link set lo up && {NAMESPACE_MARK}=1 "$@"', "sh", *command,
    ]  # fmt: skip


class RayFleet:
    """`ray start` for each node (the first is the head), then `serve deploy` of a copy of
    deploy/ray/serve.yaml with the given settings and deployment options; `stop` is
    `ray stop`."""

    def __init__(
        self,
        settings: dict[str, str],
        nodes: int = 2,
        cpus_per_node: int = 1,
        deployment: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.nodes, self.cpus_per_node = nodes, cpus_per_node
        self.deployment = deployment or {}
        # Short: Ray's socket paths live below it and must fit in 107 bytes.
        self.temp = Path(tempfile.mkdtemp(prefix="llmviz-ray-"))
        self.env = {**os.environ, **RAY_ENV}
        self.base = f"http://127.0.0.1:{PORT}"

    def start(self) -> RayFleet:
        """Start both nodes and deploy; return once every replica serves."""
        common = [
            f"--num-cpus={self.cpus_per_node}",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            "--node-ip-address=127.0.0.1",
            "--disable-usage-stats",
        ]
        self.run(
            "ray",
            "start",
            "--head",
            f"--temp-dir={self.temp}",
            "--port=6379",
            *common,
            "--dashboard-host=127.0.0.1",
        )
        for _ in range(self.nodes - 1):
            self.run("ray", "start", f"--address={HEAD}", *common)
        return self.deploy()

    def deploy(self, **settings: str) -> RayFleet:
        """`serve deploy` with these settings on top (a changed one replaces every replica);
        return once every replica serves."""
        import yaml  # PyYAML comes with Ray; where Ray is missing, `isolated` still imports

        self.settings.update(settings)
        config = self.temp / "serve.yaml"
        config.write_text(yaml.safe_dump(self.config()))
        self.run("serve", "deploy", str(config), "-a", DASHBOARD)
        wait_for(self._running, timeout=300, interval=1, message="every replica to serve")
        return self

    def config(self) -> dict[str, Any]:
        """The shipped serve.yaml, with these LLMVIZ_* settings and deployment options."""
        import yaml

        config = yaml.safe_load((REPO / "deploy" / "ray" / "serve.yaml").read_text())
        config["http_options"]["port"] = PORT
        (application,) = config["applications"]
        application["runtime_env"]["env_vars"].update(self.settings)
        (deployment,) = application["deployments"]
        deployment.update(self.deployment)
        return config

    def _running(self) -> bool:
        import yaml

        status = yaml.safe_load(self.run("serve", "status", "-a", DASHBOARD).stdout)
        application = (status.get("applications") or {}).get("llmviz") or {}
        if application.get("status") == "DEPLOY_FAILED":
            raise AssertionError(f"serve deploy failed: {application}\n{self.logs()}")
        deployment = (application.get("deployments") or {}).get("llmviz") or {}
        # Only the new version's replicas, once a redeploy has replaced the old ones.
        return application.get("status") == "RUNNING" and deployment.get("status") == "HEALTHY"

    def run(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Ray's CLI `tool` (ray, serve) from the repository root; fails on a non-zero exit."""
        done = subprocess.run(
            [str(BIN / tool), *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"{tool} {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
            )
        return done

    def url(self, path: str) -> str:
        """Absolute URL of `path` at the head node's Serve proxy."""
        return self.base + path

    def metrics_targets(self) -> list[str]:
        """Every node's metrics export address, from the file Ray writes for Prometheus."""
        found = json.loads((self.temp / "prom_metrics_service_discovery.json").read_text())
        return [target for group in found for target in group["targets"]]

    def scrape(self) -> str:
        """What Prometheus would read from every node, one text."""
        texts = []
        for target in self.metrics_targets():
            try:
                texts.append(requests.get(f"http://{target}/metrics", timeout=5).text)
            except requests.RequestException:  # an agent not listening yet
                continue
        return "\n".join(texts)

    def replica_rss(self) -> dict[int, int]:
        """Resident bytes of each replica process (Ray names them `ray::ServeReplica:...`)."""
        sizes = {}
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if (proc / "cmdline").read_bytes().startswith(b"ray::ServeReplica"):
                    pages = int((proc / "statm").read_text().split()[1])
                    sizes[int(proc.name)] = pages * os.sysconf("SC_PAGE_SIZE")
            except (OSError, ValueError):
                continue
        return sizes

    def logs(self) -> str:
        """The tail of each replica's and each worker's error log, for a failure message."""
        folder = self.temp / "session_latest" / "logs"
        parts = []
        for path in sorted(folder.glob("serve/replica_*.log")) + sorted(
            folder.glob("worker-*.err")
        ):
            parts.append(f"--- {path.name}\n" + path.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def stop(self) -> None:
        """`ray stop` (it sees only this namespace's processes), then remove the temp folder."""
        try:
            subprocess.run(
                [str(BIN / "ray"), "stop", "--force"],
                env=self.env,
                capture_output=True,
                timeout=120,
            )
        finally:
            shutil.rmtree(self.temp, ignore_errors=True)
