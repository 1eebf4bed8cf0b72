#!/usr/bin/env python3
"""Write deploy/nginx.conf with your replicas, port, body limit and balancing.

    python3 deploy/render_nginx.py --server 127.0.0.1:8001 --server 127.0.0.1:8002 \\
        --listen 80 --max-body 1048576 > /etc/nginx/nginx.conf

Only the lines of deploy/nginx.conf that end in `# render: <what>` change; anything not
given keeps the shipped value. Standard library only: it runs on any host with Python 3.
`--runtime-dir` puts the pid file, logs and temporary files in one folder, so that nginx
can run without touching /run, /var/log or /var/lib (the tests run it that way).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "nginx.conf"
SHIPPED_MAX_BODY = 1048576  # the value in nginx.conf, = the app's LLMVIZ_MAX_BODY_BYTES default
_MARK = re.compile(r"#\s*render:\s*(?P<what>[\w-]+(?: \w+)?)\s*$")
_RUNTIME_PATH = re.compile(r"(/run/|/var/log/nginx/|/var/lib/nginx/)(?P<name>[\w.-]+)")
_BALANCE = {"least_conn": "least_conn;", "model": "hash $http_x_model_id consistent;"}


def render(
    template: str,
    *,
    servers: list[str] | None = None,
    listen: str | None = None,
    max_body: int | None = None,
    balance: str | None = None,
    runtime_dir: str | None = None,
    user: str | None = None,
) -> str:
    """The config text with the given values; a ValueError if a marker is missing."""
    seen: set[str] = set()
    out: list[str] = []
    in_servers = False
    for line in template.splitlines(keepends=True):
        mark = _MARK.search(line)
        what = mark.group("what") if mark else None
        if what:
            seen.add(what)
        if what == "servers end":
            in_servers = False
        elif in_servers:
            if servers is None:
                out.append(line)
            elif not out[-1].endswith("# rendered\n"):
                indent = line[: len(line) - len(line.lstrip())]
                options = " ".join(line.split()[2:]).rstrip(";")  # max_fails=0
                for server in servers:
                    out.append(f"{indent}server {server} {options};  # rendered\n")
            continue
        if what == "servers begin":
            in_servers = True
        elif what == "listen" and listen is not None:
            line = re.sub(r"listen \S+;", f"listen {listen};", line)
        elif what == "max_body" and max_body is not None:
            line = re.sub(rf"\b{SHIPPED_MAX_BODY}\b", str(max_body), line)
        elif what == "balance" and balance is not None:
            line = re.sub(r"\S.*;(?=\s*#)", _BALANCE[balance], line, count=1)
        elif what == "runtime" and runtime_dir is not None:
            line = _RUNTIME_PATH.sub(lambda m: f"{runtime_dir}/{m.group('name')}", line)
        elif what == "user" and user is not None:
            line = re.sub(r"user \S+;", f"user {user};", line) if user else f"# {line}"
        out.append(line)
    missing = {"user", "runtime", "balance", "servers begin", "servers end", "listen", "max_body"}
    if missing - seen:
        raise ValueError(f"{TEMPLATE.name} lacks the markers {sorted(missing - seen)}")
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--server",
        action="append",
        metavar="HOST:PORT",
        help="a replica (repeat for each); default: the shipped two",
    )
    parser.add_argument("--listen", metavar="[ADDR:]PORT", help="nginx's listen (default 80)")
    parser.add_argument(
        "--max-body",
        type=int,
        default=int(os.environ.get("LLMVIZ_MAX_BODY_BYTES", SHIPPED_MAX_BODY)),
        help="bytes; must equal the replicas' LLMVIZ_MAX_BODY_BYTES (default: that variable, "
        "else 1048576)",
    )
    parser.add_argument(
        "--balance",
        choices=sorted(_BALANCE),
        help="least_conn (shipped) or model: `hash $http_x_model_id consistent`",
    )
    parser.add_argument("--runtime-dir", help="put the pid file, logs and temp files here")
    parser.add_argument("--user", help="worker user [group] (shipped: www-data); '' drops it")
    parser.add_argument("--template", default=str(TEMPLATE), help=argparse.SUPPRESS)
    parser.add_argument("-o", "--output", help="write here instead of standard output")
    args = parser.parse_args(argv)
    runtime = str(Path(args.runtime_dir).resolve()) if args.runtime_dir else None
    text = render(
        Path(args.template).read_text(),
        servers=args.server,
        listen=args.listen,
        max_body=args.max_body,
        balance=args.balance,
        runtime_dir=runtime,
        user=args.user,
    )
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
