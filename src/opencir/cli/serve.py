"""``opencir serve``: the search API and web page for an index."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("serve", help="serve the search API and web page for an index")
    parser.add_argument("--index", required=True, help="index folder")
    parser.add_argument("--model", default=None, help="model (default: the one the index records)")
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any)")
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="request body limit")
    parser.add_argument("--max-k", type=int, default=100, help="largest k a client may ask for")
    parser.add_argument("--verify", action="store_true", help="check file checksums at startup")
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="HOST",
        help="also answer requests whose Host header is HOST (NAME = any port, NAME:PORT, "
        "or * behind a proxy that checks it); repeatable. Always answered: the --host, "
        "localhost, 127.0.0.1 and [::1] on the port served",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Bind, open the index and model (exit 2 with the reason if either fails), then serve."""
    from opencir.serve import ServeConfig, create_app
    from opencir.serve.app import open_searcher
    from opencir.serve.runner import bind, serve_socket

    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    config = ServeConfig(
        index=args.index,
        model=args.model,
        host=args.host,
        port=args.port,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_k=args.max_k,
        default_k=min(12, args.max_k),
        verify=args.verify,
        allowed_hosts=tuple(args.allowed_host),
    )
    sock = bind(args.host, args.port)  # a taken port fails before the slow load
    try:
        log.info("loading index %s and its model", args.index)
        searcher = open_searcher(config)
    except BaseException:
        sock.close()
        raise
    serve_socket(create_app(config, searcher), sock)
    return 0
