"""gunicorn settings; command-line flags (e.g. --bind) and GUNICORN_CMD_ARGS override these."""

import gc
import os
import shutil
import signal
import sys
import tempfile

bind = "127.0.0.1:8000"  # loopback: exposing it is a choice (docs/operations.md)
# gevent: thousands of idle or streaming connections per worker. Torch runs on the
# engine's own OS threads, so the hub stays free to answer other requests.
worker_class = "gunicorn_worker.JSONErrorWorker"  # "gevent", answering its own errors in JSON
worker_connections = 1000
# Each worker holds its own models in memory; add workers only when memory allows.
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
# No preload: models load lazily inside each worker, after the fork (CUDA cannot be
# used in a forked child that inherited an initialised CUDA context).
preload_app = False
timeout = 60
# On SIGTERM, running generations get this long to finish; the app ends the rest
# cleanly (an `error` event) a little before it runs out.
graceful_timeout = 30
# Idle keep-alive connections hold a stopping worker until they close: keep them short.
keepalive = 2
# gunicorn 27's control socket is one fixed path per user; several servers on one
# machine (tests, benchmarks, blue/green) would fight over it.
control_socket_disable = True

# Prometheus multiprocess mode: every worker writes its metrics under one folder,
# and /metrics adds them up. A folder of our own unless the deployment gives one.
_own_metrics_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="llmviz-metrics-"))


def on_starting(server):
    """Start from empty metrics: files left by an earlier run would be added in."""
    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if name.endswith(".db"):  # prometheus_client's files, and nothing else
            os.remove(os.path.join(folder, name))


def on_exit(server):
    """Remove the metrics folder this config made."""
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def child_exit(server, worker):
    """Drop a dead worker's live gauges from the totals."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    """Hand the GIL over sooner, keep full GC passes short; on SIGTERM, end generations in time."""
    from app.ops import lifecycle

    # While a model thread runs Python (loading, sampling), the hub waits for the GIL at
    # each socket operation, up to the switch interval each time (5 ms by default): a
    # /health answer needs several. 1 ms keeps it at a few ms; torch releases the GIL
    # for its kernels, so the model threads lose little.
    sys.setswitchinterval(0.001)
    # The cyclic GC's full collections walk every tracked object, and torch, transformers
    # and the app leave some 360,000 at import: each one then holds the GIL ~0.2 s, and
    # a tokenizer load's burst of allocations (GPT-2's tokenizer.json) sets off two of them.
    # Those objects live as long as the worker; moved out of the GC's reach, a full
    # collection takes milliseconds. (Models load later, so their memory stays collectable.)
    gc.freeze()

    stop_accepting = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        stop_accepting(signum, frame)
        lifecycle.begin_shutdown(worker.cfg.graceful_timeout)

    signal.signal(signal.SIGTERM, on_sigterm)


def worker_exit(server, worker):
    """Stop the engine's threads so the worker process can exit at once."""
    import gevent

    from app import models
    from app.ops import lifecycle

    lifecycle.stop_background()
    models.cache.shutdown()
    gevent.get_hub().threadpool.kill()
