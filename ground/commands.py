"""The ``enclave`` command's registry: each concern adds its subcommands here, without importing the CLI.

``hub/cli.py`` builds the parser from ``REGISTRARS``; a concern's module (audit/cli.py, ingest/cli.py,
hub/provision.py, exports/cli.py, hub/doctor.py) defines ``register(subparsers)`` and takes
``CLIError`` and ``command_group`` from here, so the dependency runs one way: hub.cli -> concern -> ground.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from ground.paths import EnclavePaths

REGISTRARS = ("audit.cli", "ingest.cli", "hub.provision", "exports.cli", "hub.doctor")
"""The modules whose ``register(subparsers)`` adds ``enclave`` subcommands, in help order."""


class CLIError(Exception):
    """A refusal the operator can act on. The message names the file, field or request at fault."""


Handler = Callable[[argparse.Namespace, EnclavePaths], int | None]
Registrar = Callable[[argparse._SubParsersAction], None]


def command_group(subparsers: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """The subcommands of ``enclave NAME``, created on first use and shared by every concern that adds to it
    (``dataset ingest`` comes from the pipeline, ``dataset attach`` from provisioning)."""
    group = subparsers.choices.get(name)
    if group is None:
        group = subparsers.add_parser(name, help=help)
        group.set_defaults(handler=lambda args, paths: group.print_help() or 2)
        return group.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")
    return next(a for a in group._actions if isinstance(a, argparse._SubParsersAction))


def registrars() -> list[Registrar]:
    """Each concern's ``register``. Imported lazily so a broken optional part (for example the data
    pipeline) cannot stop ``enclave audit verify`` from running."""
    found = []
    for module_name in REGISTRARS:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # that concern, or a library it needs, is not installed here
            print(f"enclave: {module_name} unavailable ({exc}); its commands are left out", file=sys.stderr)
            continue
        found.append(module.register)
    return found
