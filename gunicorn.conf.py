"""gunicorn settings; command-line flags (e.g. --bind) override these."""

import os

bind = "0.0.0.0:8000"
# gevent: thousands of idle or streaming connections per worker. Torch runs on the
# engine's own OS threads, so the hub stays free to answer other requests.
worker_class = "gevent"
worker_connections = 1000
# Each worker holds its own models in memory; add workers only when memory allows.
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
# No preload: models load lazily inside each worker, after the fork (CUDA cannot be
# used in a forked child that inherited an initialised CUDA context).
preload_app = False
timeout = 60
graceful_timeout = 30
keepalive = 5
# gunicorn 27's control socket is one fixed path per user; several servers on one
# machine (tests, benchmarks, blue/green) would fight over it.
control_socket_disable = True


def worker_exit(server, worker):
    """Stop the engine's threads so the worker process can exit at once."""
    import gevent

    from app import models

    models.cache.shutdown()
    gevent.get_hub().threadpool.kill()
