"""The ground every part of the enclave stands on, and nothing else.

- ``ground.paths``: where the enclave keeps things on the host (the state directory and its layout);
- ``ground.durable``: how a file is written so that a crash leaves the old one or the whole new one;
- ``ground.access``: the one rule "may this user work in this project today", for the spawner, the
  enforcer and the export service;
- ``ground.commands``: the registry the ``enclave`` subcommands add themselves to, so that no part imports
  the command line back.

It imports only the standard library, so every other package (hub/, exports/, ingest/) may import it
and it imports none of them. audit/ does not import it either: audit/ must run alone, copied next to a
trail (docs/ARCHITECTURE.md).
"""
