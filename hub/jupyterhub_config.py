"""JupyterHub configuration of the enclave. Everything site-specific comes from policies/site.yaml.

Run as ``jupyterhub -f hub/jupyterhub_config.py`` with ENCLAVE_STATE_DIR and ENCLAVE_POLICY_DIR set
(deploy/demo and the systemd unit do this).
"""

import os
import ssl
import sys

from hub import firewall, internal_tls, runtime, services
from hub.auth import ENCLAVE_GROUPS, EnclaveAuthenticator, enclave_roles, group_dn
from hub.home import project_rows
from hub.paths import REPO_ROOT, EnclavePaths
from hub.policy import PolicyError
from hub.spawner import EnclaveSpawner

c = get_config()  # noqa: F821 -- provided by JupyterHub when it loads this file

paths = EnclavePaths.from_env()
try:
    store = runtime.policy_store(str(paths.policy_dir), str(paths.state_dir))
except PolicyError as exc:
    # Refuse to start on an invalid policy rather than guess: nothing is running yet to keep serving.
    sys.exit(f"enclave: the policy in {paths.policy_dir} is invalid, the hub will not start:\n{exc}")
site = store.current().site
# Close every existing project network before anything can run on it: dockerd keeps networks across a
# reboot, iptables does not. Spawns install the rules of their own network again (hub/firewall.py).
try:
    firewall.ensure_existing(site.network_prefix, [site.hub_port, site.exports_port])
except firewall.FirewallError as exc:
    sys.exit(f"enclave: the host firewall cannot be set, the hub will not start: {exc}")


def secret(name: str) -> str:
    path = paths.secret(name)
    try:
        return path.read_text().strip()
    except OSError as exc:
        sys.exit(
            f"enclave: cannot read secret {path}: {exc.strerror} (deploy/demo or deploy/install creates it)"
        )


# ---- processes and addresses -----------------------------------------------------------------
c.JupyterHub.bind_url = site.public_url
# The hub listens on loopback only. Containers reach it through the gate (hub/gate.py, a service below)
# on hub_port of their network's gateway, which passes only the notebook server's own API calls; the
# host firewall (hub/firewall.py) admits enclave bridges to that port and the export port, nothing else.
c.JupyterHub.hub_bind_url = f"https://127.0.0.1:{site.hub_internal_port}"
c.JupyterHub.hub_connect_url = f"https://127.0.0.1:{site.hub_internal_port}"
c.JupyterHub.db_url = f"sqlite:///{paths.hub_dir / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(paths.secret("cookie_secret"))
c.JupyterHub.pid_file = str(paths.hub_dir / "jupyterhub.pid")
# The proxy runs on its own (deploy/), so routes survive a hub restart; servers keep running too.
c.JupyterHub.cleanup_servers = False
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.api_url = f"https://127.0.0.1:{site.proxy_api_port}"
c.ConfigurableHTTPProxy.auth_token = secret("proxy_auth_token")
c.JupyterHub.template_paths = [str(REPO_ROOT / "hub" / "templates")]
c.JupyterHub.template_vars = {"enclave_projects": lambda user: project_rows(store, user)}
# About 2.5 s per spawn on 2 cores and 20 concurrent in about 36 s (DESIGN.md section 8).
c.JupyterHub.concurrent_spawn_limit = 20
c.JupyterHub.default_url = "/hub/home"

# ---- TLS inside (hub/internal_tls.py) ----------------------------------------------------------
# Hub, proxy, notebook servers, gate and services speak TLS to each other, each side presenting a
# certificate of JupyterHub's certipy-made authorities, kept in the state directory. The proxy is started
# before the hub (deploy/demo, the systemd unit), so the authorities are made here first, idempotently.
try:
    internal_tls.ensure_authorities(paths.state_dir)
except Exception as exc:  # noqa: BLE001 -- any failure here means no TLS: refuse to start
    sys.exit(f"enclave: the internal CA in {internal_tls.tls_dir(paths.state_dir)} cannot be made: {exc}")
c.JupyterHub.internal_ssl = True
c.JupyterHub.internal_certs_location = str(internal_tls.ca_dir(paths.state_dir))
c.JupyterHub.recreate_internal_certs = False  # rotation is an operator's step (docs/OPERATIONS.md)

# ---- authentication: LDAP over StartTLS, groups -> roles --------------------------------------
c.JupyterHub.authenticator_class = EnclaveAuthenticator
ldap = site.ldap
c.EnclaveAuthenticator.server_address = ldap.server_address
c.EnclaveAuthenticator.server_port = ldap.server_port
c.EnclaveAuthenticator.tls_strategy = ldap.tls_strategy
tls = {"validate": ssl.CERT_REQUIRED, "version": ssl.PROTOCOL_TLS_CLIENT}
if ldap.ca_file:
    tls["ca_certs_file"] = ldap.ca_file
c.EnclaveAuthenticator.tls_kwargs = tls
c.EnclaveAuthenticator.bind_dn_template = [ldap.user_dn_template]
c.EnclaveAuthenticator.allowed_groups = [group_dn(g, ldap.groups_base) for g in ENCLAVE_GROUPS]
c.EnclaveAuthenticator.state_dir = str(paths.state_dir)
# Second factor (hub/mfa.py) and accreditation re-read from the directory (hub/accreditation.py): every
# 30 s per user and before each spawn, with the read-only service account; see EnclaveAuthenticator.
c.EnclaveAuthenticator.mfa_lockout_after = site.mfa.lockout_after
c.EnclaveAuthenticator.mfa_lockout_seconds = site.mfa.lockout_seconds
c.EnclaveAuthenticator.reader_bind_dn = ldap.bind_dn or ""
c.EnclaveAuthenticator.reader_password_file = ldap.bind_password_file or ""
c.EnclaveAuthenticator.groups_base = ldap.groups_base
c.EnclaveAuthenticator.user_dn_template = ldap.user_dn_template
c.EnclaveAuthenticator.ca_file = ldap.ca_file or ""
c.EnclaveAuthenticator.outage_grace_seconds = ldap.outage_grace_seconds
c.EnclaveAuthenticator.idle_logout_seconds = site.session.idle_logout_minutes * 60
# Bounded sessions: the hub cookie lasts session.max_hours at most (the browser drops it then, and the hub
# refuses an older one); OAuth tokens of services default to the same age.
c.JupyterHub.cookie_max_age_days = site.session.max_hours / 24
c.Authenticator.admin_users = set()  # no JupyterHub superuser: admins get the enclave-admin role only
c.JupyterHub.custom_scopes = {
    "custom:exports:request": {"description": "Create and follow export requests for your own projects."},
    "custom:exports:review": {"description": "Review export requests of projects you are not a member of."},
    "custom:exports:audit": {"description": "Read export requests and their audit records; no voting."},
}
c.JupyterHub.load_roles = enclave_roles() + [
    {
        "name": "idle-culler",
        "services": ["idle-culler"],
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
    },
    {
        # Reads a server's image digest for export provenance; no access to users or servers' content.
        "name": "exports-service",
        "services": ["exports"],
        "scopes": ["read:servers", "admin:server_state"],
    },
    {
        "name": "enclave-policy",
        "services": ["enclave-policy"],
        # tokens and groups: a user the directory no longer accredits loses their tokens and hub groups.
        "scopes": [
            "list:users",
            "read:users",
            "read:servers",
            "delete:servers",
            "tokens",
            "groups",
            "list:groups",
        ],
    },
]

# ---- spawner ----------------------------------------------------------------------------------
c.JupyterHub.spawner_class = EnclaveSpawner
c.JupyterHub.allow_named_servers = True
c.JupyterHub.named_server_limit_per_user = 0  # the policy decides which names (projects) exist
c.EnclaveSpawner.policy_dir = str(paths.policy_dir)
c.EnclaveSpawner.state_dir = str(paths.state_dir)
c.EnclaveSpawner.prefix = site.network_prefix.rstrip("-")
# Project ids and uids are already DNS-safe (schema, LDAP username regex), so names stay readable.
c.EnclaveSpawner.name_template = "{prefix}-{raw_username}--{raw_servername}"
c.EnclaveSpawner.remove = True  # the container goes on stop; the workspace stays
c.EnclaveSpawner.pull_policy = "never"  # no registry: images are built locally (images/build)
c.EnclaveSpawner.use_internal_ip = True
c.EnclaveSpawner.cmd = ["jupyterhub-singleuser"]
# The server's own token: identify itself and report activity, nothing else (see DESIGN.md sec. 8).
# The export service reads the project from the token's own access:servers!server=<user>/<project> scope.
c.EnclaveSpawner.server_token_scopes = [
    "users:activity!user",
    "access:servers!server",
    "custom:exports:request",
]
c.EnclaveSpawner.start_timeout = 120
c.EnclaveSpawner.http_timeout = 120
c.EnclaveSpawner.debug = False

# ---- services -----------------------------------------------------------------------------------
c.JupyterHub.services = [
    {
        "name": "idle-culler",
        "command": [
            sys.executable,
            "-m",
            "jupyterhub_idle_culler",
            f"--timeout={site.idle_timeout_seconds}",
            f"--cull-every={os.environ.get('ENCLAVE_CULL_EVERY', '60')}",
            "--cull-named-servers=true",
            "--remove-named-servers=false",
            # the culler presents the hub's own pair (that is how jupyterhub_idle_culler does TLS)
            "--ssl-enabled=true",
            f"--internal-certs-location={internal_tls.ca_dir(paths.state_dir)}",
        ],
        "environment": {"ENCLAVE_STATE_DIR": str(paths.state_dir)},  # marks it as this installation's
    },
    {
        # The export review queue (exports/): the only way out. Containers reach it at their network
        # gateway on exports_port, which is why it binds every address (the firewall admits only that port).
        "name": "exports",
        "url": f"http://127.0.0.1:{site.exports_port}",
        "command": [sys.executable, "-m", "exports.service"],
        "environment": {
            "ENCLAVE_STATE_DIR": str(paths.state_dir),
            "ENCLAVE_POLICY_DIR": str(paths.policy_dir),
            "ENCLAVE_EXPORTS_BIND": f"0.0.0.0:{site.exports_port}",
            "ENCLAVE_PUBLIC_URL": site.public_url,  # https makes the service's cookies Secure
            **{k: v for k, v in os.environ.items() if k.startswith(("ENCLAVE_AUDIT_", "ENCLAVE_EXPORTS_"))},
        },
        "oauth_client_allowed_scopes": [
            "custom:exports:request",
            "custom:exports:review",
            "custom:exports:audit",
        ],
        "oauth_no_confirm": True,
    },
    {
        # The hub as containers see it: four API routes, no login, no tokens (hub/gate.py).
        "name": "enclave-gate",
        "command": [sys.executable, "-m", "hub.gate"],
        "environment": {
            "ENCLAVE_STATE_DIR": str(paths.state_dir),
            "ENCLAVE_GATE_BIND": f"0.0.0.0:{site.hub_port}",
            "ENCLAVE_HUB_UPSTREAM": f"https://127.0.0.1:{site.hub_internal_port}",
            # Containers reach the gate over TLS as https://enclave-hub:<hub_port> (hub/internal_tls.py).
            **internal_tls.gate_environment(paths.state_dir),
            # Its firewall-drop summarizer (hub/netlog.py) reads only this installation's bridges.
            "ENCLAVE_NETWORK_PREFIX": site.network_prefix,
            **{k: v for k, v in os.environ.items() if k.startswith(("ENCLAVE_AUDIT_", "ENCLAVE_GATE_"))},
        },
    },
    {
        # Applies policy changes to running servers within seconds (hub/enforcer.py).
        "name": "enclave-policy",
        "command": [sys.executable, "-m", "hub.enforcer"],
        "environment": {
            "ENCLAVE_STATE_DIR": str(paths.state_dir),
            "ENCLAVE_POLICY_DIR": str(paths.policy_dir),
            **{
                k: v
                for k, v in os.environ.items()
                if k.startswith("ENCLAVE_AUDIT_") or k in ("ENCLAVE_ENFORCE_EVERY", "ENCLAVE_DIRECTORY_EVERY")
            },
        },
    },
]

# Every service runs through hub/services.py: it dies with this hub (PR_SET_PDEATHSIG) instead of outliving
# a crash on its port with a stale OAuth secret. Services a dead hub left behind are stopped now, on the trail.
for _service in c.JupyterHub.services:
    _service["command"] = services.wrapped(_service["name"], _service["command"])
_stale = services.clear_stale(
    str(paths.state_dir), site.hub_internal_port, os.getpid(), runtime.audit_log(str(paths.state_dir))
)
if _stale:
    print(
        "enclave: stopped services left by a previous hub: " + "; ".join(s.describe() for s in _stale),
        file=sys.stderr,
    )

# ---- audit --------------------------------------------------------------------------------------
# Logins, logouts and spawns are audited by the authenticator and the spawner; culls here.
from hub.audit_hooks import RequestContext, audited_log_function

# ---- browser-facing headers and cookies (hub/headers.py) --------------------------------------------
from hub.headers import browser_settings

c.JupyterHub.tornado_settings = {
    "log_function": audited_log_function(str(paths.state_dir)),
    # Lets the spawner see which request asked for a stop, so each stop is recorded once (hub/audit_hooks.py).
    "transforms": [RequestContext],
    **browser_settings(site.public_url, max_age_days=site.session.max_hours / 24),
}

# ---- a site's own additions (docs/OPERATIONS.md section 6: its own identity provider) ----------------
# Loaded last, so that it can replace the authenticator; the roles, spawner and services above stay.
_site_config = os.environ.get("ENCLAVE_HUB_EXTRA_CONFIG")
if _site_config:
    if not os.path.isfile(_site_config):
        sys.exit(f"enclave: ENCLAVE_HUB_EXTRA_CONFIG={_site_config}: no such file")
    load_subconfig(_site_config)  # noqa: F821 -- provided by JupyterHub when it loads this file
