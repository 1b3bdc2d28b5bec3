"""Ask the enclave's export review service to export files from /workspace.

The container never uploads bytes: the service reads the named files from the project workspace on
the host side, freezes them, checks them, and puts them in front of two output checkers. Approved
files are downloaded by the researcher from the export service's web page, never into the container.

    import enclave_export
    enclave_export.request(["results/table1.csv"], context="...", controls="...")
"""

from enclave_export.client import (
    ExportClientError,
    list_requests,
    request,
    resubmit,
    show,
    to_workspace_path,
    withdraw,
)

__all__ = [
    "ExportClientError",
    "list_requests",
    "request",
    "resubmit",
    "show",
    "to_workspace_path",
    "withdraw",
]
__version__ = "0.1.0"
