"""deploy/ray/ for real: a two-node Ray cluster on this machine, deployed with Ray's CLI.

The checks themselves are tests/live/ray_fleet_checks.py, run by pytest inside network and
PID namespaces of their own (`unshare`, loopback up): Ray binds the machine's external
address unless loopback is all there is, and tests here may use loopback only. When that
pytest ends, the namespace's first process does, and the kernel ends every process left in
it, so no Ray process outlives the test even if `ray stop` never ran.

Skipped where Ray is not installed (deploy/ray/requirements.txt), except on CI, which
installs it (requirements-dev.txt) and where its absence is a failure.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

from tests.support.ray_fleet import isolated
from tests.support.server import REPO

CHECKS = "tests/live/ray_fleet_checks.py"
TIMEOUT_S = 900  # a few minutes on 2 cores; the checks have their own deadlines


def _missing() -> str | None:
    """Why the test cannot run here, or None."""
    for module in ("ray", "a2wsgi"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -r deploy/ray/requirements.txt)"
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (util-linux, iproute2)"
    if os.geteuid() != 0:
        return "namespaces of its own need root (unshare --net --pid)"
    return None


@pytest.fixture(scope="module", autouse=True)
def ray_installed():
    """Skip without Ray (or root, unshare, ip), except on CI, where that is a failure."""
    missing = _missing()
    if missing is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {missing}: .ci/run installs requirements-dev.txt")
    pytest.skip(missing)


def test_a_two_node_ray_serve_fleet():
    command = isolated(
        sys.executable, "-m", "pytest", CHECKS, "-x", "-q", "-s", "-p", "no:cacheprovider"
    )
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as expired:
        output = (expired.stdout or b"").decode(errors="replace")
        pytest.fail(f"the Ray checks took over {TIMEOUT_S} s:\n{output[-20000:]}")
    print(done.stdout[-6000:])
    assert done.returncode == 0, f"{done.stdout[-20000:]}\n{done.stderr[-5000:]}"
    assert " passed" in done.stdout.splitlines()[-1] and "skipped" not in done.stdout
