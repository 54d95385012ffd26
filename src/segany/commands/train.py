"""segany train: train or fine-tune SAM with simulated interaction from a YAML config."""

from __future__ import annotations

import argparse

from ..cli import UsageError

EXAMPLE = "segany train src/segany/weights/default_train.yaml --resume   (DDP: torchrun --nproc_per_node 2 -m segany.cli train CONFIG)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train SAM with simulated interactive prompts", epilog=f"example: {EXAMPLE}")
    p.add_argument("config", help="YAML training config (see segany.train.TrainConfig)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.pt exactly where it stopped")
    p.add_argument("--output-dir", help="override the config's output_dir")
    p.add_argument("--data-root", help="override the config's data_root (data paths are relative to it)")
    p.add_argument("--stop-at", type=int, metavar="STEP", help="save and stop at this step (resume later)")
    p.add_argument("--max-minutes", type=float, help="save and stop after this many minutes (resume later)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.data import DataError
    from ..train.trainer import ConfigError, load_config, train

    try:
        cfg = load_config(args.config)
        if args.output_dir:
            cfg.output_dir = args.output_dir
        if args.data_root:
            cfg.data_root = args.data_root
        if args.threads:
            cfg.threads = args.threads
        metrics = train(cfg, resume=args.resume, stop_at=args.stop_at, max_minutes=args.max_minutes)
    except (ConfigError, DataError) as e:
        raise UsageError(str(e)) from None
    if metrics:
        print(f"stopped at step {int(metrics['step'])} of {cfg.steps}: loss {metrics['loss']:.4f}, IoU {metrics['iou_last']:.3f}; "
              f"checkpoint {cfg.output_dir}/last.pt")
    return 0
