"""The ``segany`` command line. Each command lives in ``segany.commands.<name>`` and exposes
``register(subparsers)``; errors a user can fix exit with code 2 and one line on stderr."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from typing import Sequence

COMMAND_MODULES = (
    "segany.commands.segment",
    "segany.commands.info",
    "segany.commands.download",
    "segany.commands.export_onnx",
    "segany.commands.serve",
    "segany.commands.everything",
    "segany.commands.train",
    "segany.commands.eval",
    "segany.commands.bench",
)


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="segany", description="Segment Anything tools.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"segany {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings on the command line read as one line, without the source location. On a new
    line: a progress bar may hold the cursor."""
    return f"\nwarning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    from .checkpoints import CheckpointError, DownloadError
    from .io import ImageReadError

    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        plain_format, warnings.formatwarning = warnings.formatwarning, _format_warning
        try:
            return int(args.func(args) or 0)
        finally:
            warnings.formatwarning = plain_format
    except (UsageError, CheckpointError, ImageReadError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
