"""segany serve: the REST API and the browser annotation tool."""

from __future__ import annotations

import argparse

from ..cli import UsageError
from .common import add_model_args, resolve_model

EXAMPLE = "segany serve --checkpoint sam_vit_b_01ec64.pth --port 8000   # then open http://127.0.0.1:8000"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the annotation tool and its REST API (OpenAPI docs at /docs)",
        epilog=f"example: {EXAMPLE}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--decoder", metavar="ONNX", help="serve this exported decoder instead of exporting the model's")
    p.add_argument("--data-dir", metavar="DIR", help="keep uploaded images here (default: a temporary folder)")
    p.add_argument("--cache-mb", type=int, default=1024, help="memory for cached embeddings (default: 1024 MiB)")
    p.add_argument("--max-upload-mb", type=int, default=32, help="largest accepted upload (default: 32 MiB)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest accepted image in pixels")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..serve.app import ServeConfig, create_app
    except ImportError as e:
        raise UsageError(f"segany serve needs the 'serve' extra ({e.name} is missing): pip install 'segany[serve]'")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port} is not a valid port")
    if args.decoder and not args.decoder.endswith(".onnx"):
        raise UsageError(f"--decoder must be an .onnx file, got {args.decoder}")
    if args.decoder:
        open(args.decoder, "rb").close()  # FileNotFoundError -> one-line error
    config = ServeConfig(
        max_upload_bytes=args.max_upload_mb * 2**20,
        max_pixels=args.max_pixels,
        embedding_cache_bytes=args.cache_mb * 2**20,
        decoder_path=args.decoder,
        data_dir=args.data_dir,
    )
    app = create_app(resolve_model(args), config)
    print(f"segany: serving on http://{args.host}:{args.port}  (API docs: /docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
