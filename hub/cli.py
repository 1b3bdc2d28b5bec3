"""The ``enclave`` command: the administrator's and operator's way into the enclave.

In the manner of tljh-config: each concern registers its own subcommands (ground/commands.py), errors go to stderr
with a non-zero exit, and ``main(argv)`` is callable from tests.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ground.commands import CLIError, Handler
from ground.commands import registrars as _registrars  # a name tests replace to register one concern
from ground.paths import EnclavePaths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="enclave",
        description="Administer a research enclave: projects, members, datasets, exports and the audit trail.",
    )
    parser.add_argument(
        "--state-dir", help="state directory (default: $ENCLAVE_STATE_DIR or /var/lib/enclave)"
    )
    parser.add_argument("--policy-dir", help="policy directory (default: $ENCLAVE_POLICY_DIR or ./policies)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _registrars():
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0 if args.command is None else 2
    paths = EnclavePaths.from_env(args.state_dir, args.policy_dir)
    try:
        return handler(args, paths) or 0
    except CLIError as exc:
        print(f"enclave: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    # Run as ``python -m hub.cli`` this module is __main__: call the imported module's main, so that
    # tests that replace hub.cli._registrars see the same module the command runs in.
    from hub.cli import main as _main

    sys.exit(_main())
