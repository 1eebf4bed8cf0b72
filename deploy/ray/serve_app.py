"""llmviz-server on Ray Serve: this server's Flask app in every replica.

`deploy/ray/serve.yaml` names `deploy.ray.serve_app:app` (`serve deploy` / `serve run`).
Each replica is one process, as one gunicorn worker is: it builds the app with
`create_app()` from the `LLMVIZ_*` variables that serve.yaml's `runtime_env` gives it, and
keeps its own model cache. Requests come from Serve's proxy as ASGI, and reach Flask through
`bridge.WSGIBridge` (a2wsgi, on a thread per running request); `routing.ModelRouting` tells
Serve which models this replica holds; `metrics.RayMirror` exports the app's metrics the
way Ray exports its own. docs/scaling.md says when to use this rather than nginx replicas.
"""

from __future__ import annotations

import gc
import logging
import sys

from ray import serve

from app import create_app, models
from app.config import Settings
from app.errors import APIError
from app.ops import lifecycle
from app.ops import metrics as app_metrics
from deploy.ray.bridge import WSGIBridge
from deploy.ray.metrics import RayMirror
from deploy.ray.routing import ModelRouting

# Serve caps a replica's running requests (max_ongoing_requests); the bridge's pool only
# has to outnumber that cap. Its threads are made as requests need them, idle ones reused.
_BRIDGE_THREADS = 1024
# Serve's record of a replica's models is as long as the app's cache, so that both forget
# the same least recently used model. Read where the replica reads its settings.
_CACHE_SIZE = Settings.from_env().cache_size


@serve.deployment(
    name="llmviz",
    # Streams are long and each holds a slot: Serve's default (5) would queue the sixth
    # stream, and /health behind it. The engine bounds the work itself (LLMVIZ_MAX_BATCH,
    # LLMVIZ_MAX_QUEUE, then 503).
    max_ongoing_requests=64,
    graceful_shutdown_timeout_s=30,  # as gunicorn.conf.py's graceful_timeout
)
@serve.ingress()
class LlmvizServer:
    """One replica: the Flask app, its model cache and its engine threads."""

    def __init__(self) -> None:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        self.flask = create_app()
        app_metrics.add_mirror(RayMirror())
        # As gunicorn.conf.py's post_worker_init does for a worker, for the same reasons:
        # the event loop gets the GIL back sooner from the model threads, and full GC
        # passes skip the objects that imports left.
        sys.setswitchinterval(0.001)
        gc.freeze()

    def __serve_build_asgi_app__(self) -> ModelRouting:
        """The ASGI app Serve's proxy sends this replica's requests to."""
        # Serve's proxy answers with the request's X-Request-ID (the one the app was given).
        bridge = WSGIBridge(self.flask, workers=_BRIDGE_THREADS, drop=("x-request-id",))
        return ModelRouting(bridge, self.hold, held_here)

    @serve.multiplexed(max_num_models_per_replica=_CACHE_SIZE)
    async def hold(self, model_id: str) -> str:
        """Serve's record that this replica holds `model_id`: the app's cache has it."""
        return model_id

    def __del__(self) -> None:
        """Stop housekeeping and the engine's threads (Serve has drained the replica)."""
        lifecycle.stop_background()
        models.cache.shutdown()


def held_here(model_id: str) -> bool:
    """Whether this replica's cache has `model_id` loaded or loading."""
    try:
        spec = models.resolve(model_id, models.cache.settings)
    except APIError:
        return False
    return models.cache.peek(spec) is not None or spec.model_id in models.cache.loading()


# serve.deployment's annotations give back the class, not the Deployment it makes.
app = LlmvizServer.bind()  # type: ignore[attr-defined]
