"""EnclaveSpawner: one locked-down container per (researcher, project).

The server name *is* the project id (``/user/alice/demo-cardio/``). Everything the container gets --
image, network, mounts, limits -- is derived here from policy; nothing comes from the user.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

from dockerspawner import DockerSpawner
from tornado import web
from traitlets import List, Unicode, default, validate

from audit import AuditWriteError
from ground.access import Reason, work_refusal
from hub import firewall, internal_tls, runtime
from hub.audit_hooks import AuditUnavailable, stop_requested_here
from hub.dataset_images import ensure_dataset_filesystem
from hub.paths import EnclavePaths
from hub.policy import Policy, Project
from hub.security_profile import (
    DATA_ROOT,
    HOME,
    LXCFS_DIR,
    NOTEBOOK_GID,
    NOTEBOOK_UID,
    PROTECTED_HOST_CONFIG,
    WORKSPACE,
    Mount,
    host_block_device_dirs,
    lxcfs_problem,
    security_profile,
)
from hub.workspace import WorkspaceError, ensure_workspace

# Filesystem work (mkfs, mksquashfs, mount) blocks for up to seconds: never on the event loop, and not on
# DockerSpawner's single engine thread either, or every other spawn's engine calls would queue behind it.
FILESYSTEM_EXECUTOR = ThreadPoolExecutor(2, thread_name_prefix="enclave-fs")
# Signing a server's certificate reads the CA key and writes files: small, but still disk I/O.
TLS_EXECUTOR = ThreadPoolExecutor(1, thread_name_prefix="enclave-tls")


async def in_executor(executor: ThreadPoolExecutor, fn, *args):
    """Run a blocking call off the event loop, as DockerSpawner does for its engine calls."""
    return await asyncio.wrap_future(executor.submit(fn, *args))


class SpawnError(web.HTTPError):
    """A spawn that cannot go ahead. The message is shown as it is on the spawn page and in the API."""

    def __init__(self, message: str, status: int = 500):
        super().__init__(status, message)
        self.reason_text = message
        self.jupyterhub_message = message  # JupyterHub shows only messages marked as meant for users


class SpawnRefused(SpawnError):
    """A spawn the policy does not allow."""

    def __init__(self, message: str, status: int = 403):
        super().__init__(message, status)


def bridge_name(network: str) -> str:
    """Linux interface names are at most 15 characters; a hash keeps them unique and matchable."""
    return "enc" + hashlib.sha256(network.encode()).hexdigest()[:10]


def enclave_environment(project: Project, gateway: str, exports_port: int) -> dict[str, str]:
    """The container's own settings: its project, the export door, and writable Jupyter paths on a
    read-only root (DESIGN.md section 8)."""
    return {
        "ENCLAVE_PROJECT": project.id,
        "ENCLAVE_EXPORT_URL": f"http://{gateway}:{exports_port}/services/exports/",
        "ENCLAVE_TERMINALS": "1" if project.terminals else "0",
        "HOME": HOME,
        "JUPYTER_RUNTIME_DIR": f"{HOME}/.local/share/jupyter/runtime",
        "JUPYTER_DATA_DIR": f"{HOME}/.local/share/jupyter",
        "IPYTHONDIR": f"{HOME}/.ipython",
        "MPLCONFIGDIR": f"{HOME}/.config/matplotlib",
        "XDG_CACHE_HOME": f"{HOME}/.cache",
    }


class EnclaveSpawner(DockerSpawner):
    """DockerSpawner whose container is derived entirely from the project policy."""

    state_dir = Unicode(
        help="The enclave state directory; workspaces and published datasets are found under it.",
    ).tag(config=True)

    policy_dir = Unicode(
        help="The policy directory. The spawner consults it at every spawn, so a policy change applies "
        "to the next spawn without a hub restart.",
    ).tag(config=True)

    lxcfs_dir = Unicode(
        str(LXCFS_DIR),
        help="Where lxcfs is mounted on the host. Its per-container /proc files (meminfo, stat, loadavg, "
        "cpuinfo, uptime) replace the kernel's host-wide ones, which let one project watch or signal to "
        "another. A spawn is refused while lxcfs is not answering.",
    ).tag(config=True)

    workspace_mkfs = List(
        Unicode(),
        ["mkfs.ext4"],
        help="The command that makes a quota'd workspace's ext4 filesystem (its options follow). Only the "
        "event-loop test sets another one: a wrapper that is slow like mkfs on a large, slow disk.",
    ).tag(config=True)

    @default("state_dir")
    def _state_dir_default(self):
        return str(EnclavePaths.from_env().state_dir)

    @default("policy_dir")
    def _policy_dir_default(self):
        return str(EnclavePaths.from_env().policy_dir)

    @property
    def policy_store(self):
        return runtime.policy_store(self.policy_dir, self.state_dir)

    _spawn_policy: Policy | None = None

    @property
    def policy(self) -> Policy:
        """The policy of this spawn: read once when it starts (:meth:`start`), so an edit in the middle of a
        spawn cannot give it a mix of two policies. Outside a spawn, the newest policy."""
        return self._spawn_policy or self.policy_store.current()

    @property
    def audit(self):
        """The installation's audit log: every spawn decision is recorded on it."""
        return runtime.audit_log(self.state_dir)

    @default("options_form")
    def _options_form_default(self):
        return ""  # researchers choose nothing: no image, mount or network

    @default("network_name")
    def _network_name_default(self):
        return self.project_network_name()

    @validate("extra_host_config", "extra_create_kwargs")
    def _refuse_profile_overrides(self, proposal):
        value = proposal["value"]
        if callable(value):
            raise TypeError(
                f"EnclaveSpawner.{proposal['trait'].name} may not be a callable: it would bypass the profile"
            )
        clash = sorted(set(value) & (PROTECTED_HOST_CONFIG | {"host_config", "image", "user", "volumes"}))
        if clash:
            raise ValueError(
                f"EnclaveSpawner.{proposal['trait'].name} may not set {', '.join(clash)}: "
                "these come from hub/security_profile.py only"
            )
        return value

    # ---- policy -------------------------------------------------------------------------------

    @property
    def paths(self) -> EnclavePaths:
        return EnclavePaths(Path(self.state_dir), Path(self.policy_dir))

    def project_network_name(self) -> str:
        prefix = self.policy.site.network_prefix
        return f"{prefix}{self.name}"

    def authorize(self) -> Project:
        """The project this server is for, or :class:`SpawnRefused` saying why not."""
        if not self.name:
            raise SpawnRefused("Choose a project: each notebook server belongs to one project.")
        unexpected = sorted(set(self.user_options or {}) - {"profile"})
        if unexpected:
            # JupyterHub keeps user_options for the next spawn: forget refused ones, or they stick.
            self.user_options = {}
            if self.orm_spawner is not None:
                self.orm_spawner.user_options = {}
                self.db.commit()
            raise SpawnRefused(
                f"Spawn options are not accepted ({', '.join(unexpected)}): the image, mounts and network "
                "come from the project policy.",
                status=400,
            )
        project = self.policy.projects.get(self.name)
        if project is None:
            raise SpawnRefused(f"Unknown project '{self.name}'.", status=404)
        refusal = work_refusal(self.user.name, {g.name for g in self.user.groups}, project, date.today())
        if refusal and refusal.reason is Reason.NOT_ACCREDITED:
            raise SpawnRefused(f"{refusal.message}.")
        if refusal:
            raise SpawnRefused(f"Cannot start {project.id}: {refusal.message}.")
        return project

    def project_mounts(self, project: Project, in_use: bool) -> list[Mount]:
        """Datasets read-only under /data (outside Jupyter's root), the shared workspace read-write.

        Blocking (it builds and mounts filesystems): run it in FILESYSTEM_EXECUTOR. Each dataset is its own
        read-only squashfs (hub/dataset_images.py), so statvfs on /data shows that filesystem only."""
        policy = self.policy
        mounts = []
        for ref in project.datasets:
            published = self.paths.data_dir / project.id / ref.id / ref.version
            if not (published / "manifest.json").is_file():
                raise SpawnRefused(
                    f"Cannot start {project.id}: dataset {ref.id} version {ref.version} is not published "
                    f"for this project yet (the administrator runs `enclave dataset ingest`).",
                    status=409,
                )
            if ref.id not in policy.datasets:
                raise SpawnRefused(
                    f"Cannot start {project.id}: dataset {ref.id} is not catalogued.", status=409
                )
            try:
                mounted = ensure_dataset_filesystem(
                    Path(self.state_dir), published, project.id, ref.id, ref.version
                )
            except WorkspaceError as exc:
                raise SpawnError(f"Cannot start {project.id}: {exc}") from exc
            mounts.append(Mount(mounted, f"{DATA_ROOT}/{ref.id}", read_only=True))
        mounts.append(Mount(self.ensure_workspace(project, in_use), WORKSPACE, read_only=False))
        return mounts

    def ensure_workspace(self, project: Project, in_use: bool) -> Path:
        """The project's shared workspace, owned by the notebook uid, quota'd when the policy says so.
        ``in_use``: a server of the project runs, so its filesystem stays online (blocking; executor)."""
        try:
            return ensure_workspace(
                self.paths.workspaces_dir,
                project.id,
                project.resources.workspace_quota,
                in_use=in_use,
                mkfs=tuple(self.workspace_mkfs),
            )
        except WorkspaceError as exc:
            raise SpawnError(f"Cannot start {project.id}: {exc}") from exc

    async def project_in_use(self, project_id: str) -> bool:
        """Whether any container of this project runs (then its workspace stays online)."""
        running = await self.docker("containers", filters={"label": f"org.enclave.project={project_id}"})
        return bool(running)

    # ---- engine -------------------------------------------------------------------------------

    async def check_engine(self) -> None:
        """Fail early and plainly when the engine is down, before anything is created."""
        try:
            await self.docker("ping")
        except Exception as exc:  # docker raises several unrelated types for "cannot connect"
            host = (self.client_kwargs or {}).get("base_url") or os.environ.get(
                "DOCKER_HOST", "unix:///var/run/docker.sock"
            )
            raise SpawnRefused(
                f"The container engine is unreachable ({host}): {type(exc).__name__}. "
                "Nothing was created; ask the operator to start dockerd.",
                status=503,
            ) from exc

    def _ensure_network(self, project: Project) -> dict[str, Any]:
        """The project's internal network, created once, and its host firewall (blocking; executor)."""
        name = self.project_network_name()
        client = self.client
        found = client.networks(names=[name])
        found = [n for n in found if n["Name"] == name]
        if found:
            net = client.inspect_network(found[0]["Id"])
            if not net.get("Internal"):
                raise SpawnRefused(f"Network {name} exists but is not internal; refusing to use it.", 500)
        else:
            net = client.create_network(
                name,
                driver="bridge",
                internal=True,
                check_duplicate=True,
                labels={"org.enclave.project": project.id, "org.enclave.role": "project-network"},
                options={
                    "com.docker.network.bridge.name": bridge_name(name),
                    "com.docker.network.bridge.enable_ip_masquerade": "false",
                },
            )
            net = client.inspect_network(net["Id"])
        site = self.policy.site
        # The bridge the network really has: a network made elsewhere (by hand, by an older version) has
        # Docker's br-<id>, and rules for our own name would leave that bridge open to the host.
        firewall.ensure_bridge(firewall.network_bridge(net), [site.hub_port, site.exports_port])
        return net

    async def ensure_network(self, project: Project) -> str:
        """Create the network if needed and return its gateway address (where the hub is reached)."""
        net = await asyncio.wrap_future(self.executor.submit(self._ensure_network, project))
        configs = net.get("IPAM", {}).get("Config") or []
        gateway = next((c.get("Gateway") for c in configs if c.get("Gateway")), None)
        if not gateway:
            raise SpawnRefused(
                f"Network {net['Name']} has no gateway address; cannot reach the hub from it.", 500
            )
        return gateway

    # ---- lifecycle ----------------------------------------------------------------------------

    def record(self, action: str, outcome: str = "ok", **details: Any) -> None:
        self.audit.append(
            actor=self.user.name,
            action=action,
            project=self.name or "(none)",
            target=f"{self.user.name}/{self.name}",
            outcome=outcome,
            details=details,
        )

    async def start(self):
        self.image_digest = ""  # set again once a container runs; a failed spawn leaves nothing to stop
        # One policy for the whole spawn: every decision reads this snapshot (see `policy`).
        self._spawn_policy = self.policy_store.current()
        try:
            return await self._start(self._spawn_policy)
        finally:
            self._spawn_policy = None

    async def _start(self, policy: Policy):
        try:
            project = self.authorize()
            await self.check_engine()
            # A hung FUSE daemon blocks its readers: ask it from the executor, not the event loop.
            problem = await in_executor(FILESYSTEM_EXECUTOR, lxcfs_problem, Path(self.lxcfs_dir))
            if problem:
                raise SpawnError(
                    f"Cannot start {project.id}: {problem}. Without it the container would "
                    "see the host's memory, load and disk counters."
                )
            in_use = await self.project_in_use(project.id)
            mounts = await in_executor(FILESYSTEM_EXECUTOR, self.project_mounts, project, in_use)
            gateway = await self.ensure_network(project)
            tls = await self.prepare_tls()
        except SpawnRefused as exc:
            self.record("server.spawn", "denied", reason=exc.reason_text)
            raise
        except Exception as exc:  # workspace, firewall or engine trouble: on the trail too
            self.record("server.spawn", "error", reason=f"{type(exc).__name__}: {exc}"[:1000])
            raise
        site = policy.site
        self.network_name = self.project_network_name()
        # The gate's certificate is for a name, not for the gateway's address (which differs per network).
        hub_host = internal_tls.GATE_HOSTNAME if tls is not None else gateway
        self.hub_connect_url = f"{'https' if tls is not None else 'http'}://{hub_host}:{site.hub_port}"
        self.image = site.image
        self._profile = security_profile(
            image=site.image,
            network=self.network_name,
            dns=gateway,
            mounts=mounts,
            cpu=project.resources.cpu,
            memory=project.resources.memory,
            pids=project.resources.pids,
            gpus=project.resources.gpus,
            port=self.port,
            lxcfs_dir=Path(self.lxcfs_dir),
            host_block_devices=host_block_device_dirs(),
            tls=tls,
            hub_hostname=internal_tls.GATE_HOSTNAME if tls is not None else None,
        )
        self._enclave_env = enclave_environment(project, gateway, site.exports_port)
        # The record comes first: a spawn that cannot be recorded does not start (issue 19).
        await self.record_spawn(site.image)
        try:
            ip_port = await super().start()
            if tls is not None:
                # Signed for the address the engine gave; the container starts its server when it appears.
                await in_executor(
                    TLS_EXECUTOR,
                    internal_tls.sign_server,
                    Path(self.state_dir),
                    self.container_name,
                    ip_port[0],
                    (NOTEBOOK_UID, NOTEBOOK_GID),
                )
        except Exception as exc:
            self.record("server.spawn", "error", reason=f"{type(exc).__name__}: {exc}")
            raise
        container = await self.docker("inspect_container", self.container_id)
        self.image_digest = container["Image"]  # what runs, even if the tag moved since
        self.record("server.start", image=site.image, image_digest=self.image_digest)
        for ref in project.datasets:
            self.audit.append(
                actor=self.user.name,
                action="dataset.mount",
                project=project.id,
                target=f"{ref.id}@{ref.version}",
                details={"server": f"{self.user.name}/{self.name}", "read_only": True},
            )
        return ip_port

    # ---- TLS inside (hub/internal_tls.py) ----------------------------------------------------------------

    async def create_certs(self):
        """Where the container will find its pair. It is signed in :meth:`start`, once the container has its
        address: the hub and the proxy verify the address they connect to, and it is not known before."""
        return internal_tls.container_paths()

    async def move_certs(self, paths):
        """Nothing to move: the pair is written into a directory bound read-only into the container
        (DockerSpawner's own staging container and volume would bypass the security profile)."""
        return paths

    async def prepare_tls(self) -> Path | None:
        """An empty certificate directory for this server, or None when internal_ssl is off."""
        if not self.internal_ssl:
            return None
        return await in_executor(
            TLS_EXECUTOR, internal_tls.prepare_server_dir, Path(self.state_dir), self.container_name
        )

    async def get_command(self):
        command = await super().get_command()
        if not self.internal_ssl:
            return command
        return ["/bin/sh", "-c", internal_tls.WAIT_FOR_CERTIFICATE, "enclave-wait-for-tls", *command]

    image_digest = ""

    def get_state(self):
        state = super().get_state()
        if self.image_digest:
            state["image_digest"] = self.image_digest
        return state

    def load_state(self, state):
        super().load_state(state)
        self.image_digest = state.get("image_digest", "")

    async def get_ip_and_port(self):
        """The container's address on the project network; a container that died at start says why."""
        for _ in range(20):
            info = await self.docker("inspect_container", self.container_id)
            state = info["State"]
            if not state["Running"]:
                logs = (await self.docker("logs", self.container_id, tail=20)).decode(errors="replace")
                raise SpawnError(
                    f"The notebook container exited at start (exit code {state['ExitCode']}): "
                    f"{state.get('Error') or logs.strip()[-800:]}"
                )
            ip = (info["NetworkSettings"]["Networks"].get(self.network_name) or {}).get("IPAddress")
            if ip:
                return ip, self.port
            await asyncio.sleep(0.25)
        raise SpawnError(f"The notebook container has no address on network {self.network_name}.")

    def get_env(self):
        env = super().get_env()
        env.update(getattr(self, "_enclave_env", {}))
        env["JUPYTERHUB_DISABLE_USER_CONFIG"] = "1"
        return env

    async def create_object(self):
        """Create the container from the security profile alone (see hub/security_profile.py)."""
        profile = self._profile
        create = dict(profile["create"])
        create.update(
            name=self.container_name,
            environment=self.get_env(),
            command=await self.get_command(),
            ports={f"{self.port}/tcp": None},
            host_config={
                **self.client.create_host_config(**profile["host_config"]),
                **profile["engine_host_config"],
            },
            labels={**create["labels"], "org.enclave.project": self.name},
        )
        return await self.docker("create_container", **create)

    async def record_spawn(self, image: str) -> str:
        """Write the spawn's record before the container exists; refuse the spawn if the trail cannot take it."""
        try:
            digest = (await self.docker("inspect_image", image))["Id"]
        except Exception as exc:
            self.record("server.spawn", "error", reason=f"image {image}: {type(exc).__name__}: {exc}"[:1000])
            raise SpawnError(f"The notebook image {image} is not available on this host: {exc}") from exc
        try:
            self.record("server.spawn", image=image, image_digest=digest)
        except AuditWriteError as exc:
            self.log.error(
                "spawn of %s/%s refused: the audit trail cannot be written: %s",
                self.user.name,
                self.name,
                exc,
            )
            raise SpawnError(AuditUnavailable("start a server").reason_text, 503) from exc
        return digest

    async def stop(self, now=False):
        digest = self.image_digest
        await super().stop(now=now)
        if self.internal_ssl:  # the key goes with its server
            await in_executor(
                TLS_EXECUTOR, internal_tls.remove_server_dir, Path(self.state_dir), self.container_name
            )
        if stop_requested_here(self.user.name, self.name, digest):
            return  # asked for over the API: hub/audit_hooks.py records it once, naming who asked
        if not digest:
            return  # the clean-up after a spawn that never ran a container: its server.spawn record says why
        # Stopped without a request (the hub shutting a server down): the server is gone, so the record
        # must not be lost either; on a full disk it goes to the spool.
        self.audit.append_or_spool(
            actor=self.user.name,
            action="server.stop",
            project=self.name or "(none)",
            target=f"{self.user.name}/{self.name}",
            details={"image_digest": digest or "unknown"},
        )
