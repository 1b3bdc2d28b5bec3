"""The ``enclave`` command: the administrator's and operator's way into the enclave.

In the manner of tljh-config: each concern registers its own subcommands here, errors go to stderr
with a non-zero exit, and ``main(argv)`` is callable from tests.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from hub.paths import EnclavePaths


class CLIError(Exception):
    """A refusal the operator can act on. The message names the file, field or request at fault."""


Handler = Callable[[argparse.Namespace, EnclavePaths], int | None]


def command_group(subparsers: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """The subcommands of ``enclave NAME``, created on first use and shared by every concern that adds to it
    (``dataset ingest`` comes from the pipeline, ``dataset attach`` from provisioning)."""
    group = subparsers.choices.get(name)
    if group is None:
        group = subparsers.add_parser(name, help=help)
        group.set_defaults(handler=lambda args, paths: group.print_help() or 2)
        return group.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")
    return next(a for a in group._actions if isinstance(a, argparse._SubParsersAction))


def _registrars() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Each concern adds its own subcommands. Imported lazily so a broken optional part
    (for example the data pipeline) cannot stop ``enclave audit verify`` from running."""
    registrars = []
    for module_name in ("audit.cli", "ingest.cli", "hub.provision", "exports.cli", "hub.doctor"):
        try:
            module = __import__(module_name, fromlist=["register"])
        except ImportError as exc:  # that concern, or a library it needs, is not installed here
            print(f"enclave: {module_name} unavailable ({exc}); its commands are left out", file=sys.stderr)
            continue
        registrars.append(module.register)
    return registrars


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
    # Run as ``python -m hub.cli`` this module is __main__, and the commands raise hub.cli.CLIError, a
    # different class from __main__.CLIError: call the imported module's main so that they are caught.
    from hub.cli import main as _main

    sys.exit(_main())
