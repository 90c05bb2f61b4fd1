"""`python -m deploy_runs.sandbox up [--extra-hosts N] | down | status | add-host NAME | install`"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from . import SandboxError, add_host, down, install, status, up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy_runs.sandbox")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="start the sandbox (idempotent)")
    p_up.add_argument("--extra-hosts", type=int, default=0, metavar="N",
                      help="also namespace hosts h1..hN")
    sub.add_parser("down", help="stop what the sandbox started")
    sub.add_parser("status", help="show the sandbox (starts nothing)")
    p_add = sub.add_parser("add-host", help="add a network-namespace host")
    p_add.add_argument("name")
    sub.add_parser("install", help="apt-get install missing packages")
    args = parser.parse_args(argv)
    # a handler of our own: importing deploy_runs may already have configured the root logger
    logger = logging.getLogger("deploy_runs.sandbox")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    logger.propagate = False

    started = time.monotonic()
    try:
        if args.cmd == "up":
            print(up(extra_hosts=args.extra_hosts).model_dump_json(indent=2))
        elif args.cmd == "down":
            down()
            print(status().model_dump_json(indent=2))
        elif args.cmd == "status":
            print(status().model_dump_json(indent=2))
        elif args.cmd == "add-host":
            print(add_host(args.name).model_dump_json(indent=2))
        elif args.cmd == "install":
            install()
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    logger.info("%s took %.2f s", args.cmd,
                                                  time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
