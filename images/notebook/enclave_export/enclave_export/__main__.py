import sys

from enclave_export.cli import main

sys.exit(main())
