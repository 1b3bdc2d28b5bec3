"""The enclave's tamper-evident audit trail. See audit/README.md for the record format.

from audit import AuditLog
log = AuditLog.open(paths.state_dir)
log.append(actor="alice", action="server.spawn", project="demo-cardio", target="demo-cardio",
           details={"image_digest": "sha256:..."})
"""

from audit.errors import (
    AuditError,
    AuditIntegrityError,
    AuditKeyError,
    AuditQueryError,
    AuditRecordError,
    AuditWriteError,
    UnknownActionError,
)
from audit.log import AuditHealth, AuditLog, health
from audit.spool import Spooled
from audit.verify import Reason, VerifyReport
from audit.vocabulary import ACTIONS, VOCABULARY_VERSION

__all__ = [
    "ACTIONS",
    "VOCABULARY_VERSION",
    "AuditError",
    "AuditHealth",
    "AuditIntegrityError",
    "AuditKeyError",
    "AuditLog",
    "AuditQueryError",
    "AuditRecordError",
    "AuditWriteError",
    "Reason",
    "Spooled",
    "UnknownActionError",
    "VerifyReport",
    "health",
]
