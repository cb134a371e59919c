"""localstripe bound to loopback, its state kept in memory rather than in a shared /tmp pickle."""

from __future__ import annotations

import argparse

from aiohttp import web
from localstripe import resources
from localstripe.server import app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # localstripe pickles every write to /tmp/localstripe.pickle, shared by every instance on the
    # machine; a test stack must not see another stack's coupons, so state stays in this process.
    resources.Store.dump_to_disk = lambda self: None
    web.run_app(app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
