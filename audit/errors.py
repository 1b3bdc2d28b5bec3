"""Errors of the audit trail. Each message names the file, record or field at fault."""

from __future__ import annotations


class AuditError(Exception):
    """Base class: something about the audit trail needs an operator's attention."""


class AuditRecordError(AuditError, ValueError):
    """The caller asked to record something malformed. Nothing was written."""


class UnknownActionError(AuditRecordError):
    """The action is not in the vocabulary (audit/vocabulary.py). Nothing was written."""


class AuditKeyError(AuditError):
    """A key file is missing, malformed or readable by others."""


class AuditWriteError(AuditError, OSError):
    """The record could not be made durable (full disk, I/O error). It was not acknowledged, and the
    log was left valid: the partial write was cut off, or will be on the next append."""


class AuditIntegrityError(AuditError):
    """The log on disk is not in a state a writer can continue from; run ``enclave audit verify``."""


class AuditQueryError(AuditError, ValueError):
    """A filter for ``records()`` / ``enclave audit show`` is malformed."""
