"""``segresearch serve``: the retrieval server and the LangGraph API server. Both need the
server extra; the command table names it when it is missing."""

from __future__ import annotations

import argparse

from segresearch.cli.common import EXIT_OK, PORT_MAX, die
from segresearch.core.envvars import env_str
from segresearch.servers.langgraph_server import ServeError, serve_graph
from segresearch.servers.retriever import serve
from segresearch.tools.search import SearchUnavailable


def cmd_serve(args: argparse.Namespace) -> int:
    return _serve_graph(args) if args.serve_command == "graph" else _serve_retriever(args)


def _serve_retriever(args: argparse.Namespace) -> int:
    """Startup problems (no knowledge base, unknown backend, port taken) are one ``error:``
    line: they are found before uvicorn starts serving."""
    kb = args.kb or env_str("SEGRESEARCH_KB")
    if not kb:
        return die("--kb is required (a folder with text_corpus.jsonl; env SEGRESEARCH_KB)")
    if args.max_batch < 1:
        return die(f"--max-batch must be at least 1; got {args.max_batch}")
    if not 0 <= args.port <= PORT_MAX:  # the socket layer would wrap it round to another port
        return die(f"--port must be between 0 (any free port) and {PORT_MAX}; got {args.port}")
    try:
        serve(kb, host=args.host, port=args.port, search=args.search,
              batching=not args.no_batching, max_batch=args.max_batch)
    except (SearchUnavailable, ValueError, OSError, ImportError, RuntimeError) as e:
        return die(str(e) or type(e).__name__)
    return EXIT_OK


def _serve_graph(args: argparse.Namespace) -> int:
    """The LangGraph API server. What stops it from starting (port taken, an exposed host
    without a token) is one ``error:`` line; the server's own exit status is returned as ours."""
    try:
        return serve_graph(host=args.host, port=args.port, jobs=args.jobs,
                           state_dir=args.state_dir, insecure=args.insecure,
                           database=args.database or "", redis=args.redis or "",
                           cors_origins=args.cors_origin or (), media_max_gb=args.media_max_gb,
                           heartbeat_s=args.heartbeat, allowed_hosts=args.allowed_host or ())
    except ServeError as e:
        return die(str(e))
