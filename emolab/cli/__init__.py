"""The ``emolab`` command: argparse front end only. Each sub-command is a thin layer over a library call.

The same parser also runs as ``emotion-steering`` (:func:`emotion_steering`), so the reference tool's
documented commands (``emotion-steering extract|test|serve|test-http ...``) run unchanged; the program
name appears in usage and error lines, and ``extract --output`` defaults to the reference tool's
``./vectors`` under that name.

Library errors (``EmolabError``) become one error line and exit status 2; when an error names the
setting at fault, the line names its flag. Nothing in the library imports this package.
"""

from __future__ import annotations

import argparse
import sys

from emolab.cli.bench import add_bench
from emolab.cli.common import REFERENCE_PROG, UsageError, flag_for
from emolab.cli.eval import add_eval
from emolab.cli.export import add_export_gguf
from emolab.cli.extract import add_build_model, add_extract, add_test
from emolab.cli.readout import add_circumplex, add_readout
from emolab.cli.serve import add_serve
from emolab.cli.simulate import add_simulate
from emolab.cli.soak import add_soak
from emolab.cli.test_http import add_test_http
from emolab.cli.tune import add_tune

__all__ = ["REFERENCE_PROG", "build_parser", "emotion_steering", "main"]

BUILDERS = (add_extract, add_test, add_build_model, add_serve, add_test_http, add_bench, add_soak, add_eval,
            add_tune, add_export_gguf, add_simulate, add_readout, add_circumplex)


def build_parser(prog: str = "emolab") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="emolab: emotion vectors, inspection, steering servers.")
    parser.set_defaults(prog=prog)
    sub = parser.add_subparsers(dest="command", required=True)
    for builder in BUILDERS:
        builder(sub)
    return parser


def main(argv: list[str] | None = None, prog: str = "emolab") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    from emolab.core.errors import EmolabError

    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        parser.error(str(exc))
    except EmolabError as exc:
        where = f"{flag_for(exc.setting, getattr(args, 'flags', None))}: " if exc.setting else ""
        print(f"{prog} {args.command}: error: {where}{exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError, RuntimeError) as exc:  # from libraries below emolab (transformers, torch, ...)
        print(f"{prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


def emotion_steering(argv: list[str] | None = None) -> int:
    """The ``emotion-steering`` console script: emolab under the reference tool's program name."""
    return main(argv, prog=REFERENCE_PROG)
