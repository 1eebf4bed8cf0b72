"""Whether the fused decoding step can be built here (a C compiler on the PATH)."""

from __future__ import annotations

import os

import pytest

from app.engine.kernels import build


def require_compiler() -> None:
    """Skip the calling test without a C compiler, except on CI, where it is a failure
    (.ci/run installs gcc)."""
    try:
        build._compiler()
    except build.KernelUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {exc}: .ci/run installs gcc")
        pytest.skip(f"{exc}: the fused step cannot be built here")
