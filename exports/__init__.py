"""The export review queue ("airlock"): the only way a result leaves the enclave.

A researcher asks to export files from the project workspace. The service freezes them into a
content-addressed quarantine, runs statistical disclosure checks on the frozen bytes, lets two
independent output checkers vote per file, and releases exactly the approved bytes to the requester.

Modules, one concept each:

- ``domain``       the request, its files, votes and comments as frozen dataclasses; the state table
- ``permissions``  who may do what, as pure functions that raise ``PermissionDenied``
- ``projects``     the project directory the service consults (members, reviewers, thresholds)
- ``workspace``    reading a named file out of an attacker-controlled workspace, safely
- ``store``        quarantine and release stores (content-addressed files, atomic writes)
- ``checks``       automated disclosure checks (tables, identifiers, PNG, ACRO results)
- ``storage``      the database, behind a Protocol, with a SQLAlchemy implementation
- ``workflow``     the operations (create, vote, release...) that tie the above together
- ``views``        what each viewer may see of a request (blinding lives here)
- ``web``          the tornado application: REST API, pages, identity from JupyterHub
- ``service``      ``python -m exports.service``: configuration from the environment
"""
