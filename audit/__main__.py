"""``python -m audit verify | show | checkpoint``: the audit commands without the rest of the enclave."""

import sys

from audit.cli import main

sys.exit(main())
