"""`minillama serve`: the OpenAI-compatible API and the playground for one model directory."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from pathlib import Path

from minillama.options import add_checkpoint_option, port, positive_int

log = logging.getLogger(__name__)
API_KEY_ENV = "MINILLAMA_API_KEY"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API, with a web playground",
        description="Serve a model directory: POST /v1/completions and /v1/chat/completions (OpenAI's "
                    "schema, stream: true for server-sent events), GET /v1/models, GET /health, and a "
                    "playground page at /. Concurrent requests are decoded together (continuous batching). "
                    "Needs the serve extra: pip install 'minillama[serve]'.")
    add_checkpoint_option(parser)
    parser.add_argument("--tokenizer", help="tokenizer directory (default: the checkpoint's own)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: %(default)s, this machine only)")
    parser.add_argument("--port", type=port, default=8000, help="port (default: %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help=f"require 'Authorization: Bearer KEY' on /v1 routes (default: ${API_KEY_ENV}, "
                             "unset = no key)")
    parser.add_argument("--model-name",
                        help="the model id clients send (default: the checkpoint's folder name)")
    parser.add_argument("--max-batch-size", type=positive_int, default=16,
                        help="requests decoded together; more wait for a free row (default: %(default)s)")
    parser.add_argument("--context", type=positive_int, default=None,
                        help="most tokens (prompt + completion) per request; the KV cache holds "
                             "max-batch-size x context tokens (default: the model's max_position_embeddings)")
    parser.add_argument("--max-body-bytes", type=positive_int, default=4 << 20,
                        help="larger request bodies get 413 before they are read (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps (auto: cuda when available)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                        help="weight dtype (default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads (default: torch's choice, one per core)")
    parser.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ModuleNotFoundError:
        from minillama.errors import MiniLlamaError

        raise MiniLlamaError("serving needs FastAPI and uvicorn: pip install 'minillama[serve]'") from None
    import torch

    from minillama.generate import prepare_for_decoding
    from minillama.hardware import resolve_device
    from minillama.model import MiniLlama
    from minillama.serve.app import ServeConfig, create_app
    from minillama.tokenizer import Tokenizer, check_tokenizer_matches, find_tokenizer_dir
    from minillama.train.checkpoint import resolve_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = resolve_checkpoint(args.checkpoint)
    tokenizer_dir = find_tokenizer_dir(args.tokenizer, checkpoint)
    if tokenizer_dir is None:
        raise FileNotFoundError(f"no tokenizer.json in {args.tokenizer or checkpoint}; pass --tokenizer DIR")
    model = MiniLlama.from_pretrained(checkpoint, device=resolve_device(args.device),
                                      dtype=getattr(torch, args.dtype))
    model = prepare_for_decoding(model.eval())
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    check_tokenizer_matches(tokenizer, model.config.vocab_size, checkpoint)
    name = args.model_name or Path(args.checkpoint).resolve().name
    if not args.api_key and not is_loopback(args.host):
        log.warning("serving on %s without an API key: anyone who can reach it can use it (set --api-key)",
                    args.host)
    config = ServeConfig(name, args.api_key or None, args.max_batch_size, args.context, args.max_body_bytes)
    app = create_app(model, tokenizer, config)
    log.info("serving %s at http://%s:%d (playground at /)", name, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
