"""The baseline hub of bench/spawn.py: plain DockerSpawner with its default options, on Docker's default
bridge network, with the same notebook image as the enclave. Nothing here is locked down -- that is the
point: it measures what the enclave's profile, policy checks, network and firewall cost on top.

Started by bench/spawn.py only; everything comes from the BENCH_* variables it sets. Users are created
through the API with the bench service's token (DummyAuthenticator with a random password, so nobody
can log in through the form either).
"""

import os
from pathlib import Path

c = get_config()  # noqa: F821 -- provided by JupyterHub

state = os.environ["BENCH_STATE"]
c.JupyterHub.bind_url = f"http://127.0.0.1:{os.environ['BENCH_PUBLIC_PORT']}"
# The container reaches the hub through docker0's gateway, as in DockerSpawner's own examples.
c.JupyterHub.hub_bind_url = f"http://0.0.0.0:{os.environ['BENCH_HUB_PORT']}"
c.JupyterHub.hub_connect_url = f"http://{os.environ['BENCH_DOCKER0']}:{os.environ['BENCH_HUB_PORT']}"
c.JupyterHub.db_url = f"sqlite:///{state}/hub/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = f"{state}/secrets/cookie_secret"
c.JupyterHub.pid_file = f"{state}/hub/jupyterhub.pid"
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{os.environ['BENCH_API_PORT']}"
c.ConfigurableHTTPProxy.auth_token = Path(state, "secrets", "proxy_auth_token").read_text().strip()
c.JupyterHub.cleanup_servers = True
c.JupyterHub.concurrent_spawn_limit = 20

c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = os.environ["BENCH_TOKEN"]
c.Authenticator.allow_all = True
c.JupyterHub.services = [{"name": "bench", "api_token": os.environ["BENCH_TOKEN"]}]
c.JupyterHub.load_roles = [
    {"name": "bench", "services": ["bench"], "scopes": ["admin:users", "admin:servers", "read:users"]},
]

c.JupyterHub.spawner_class = "dockerspawner.DockerSpawner"
c.JupyterHub.allow_named_servers = True
c.DockerSpawner.image = os.environ["BENCH_IMAGE"]
c.DockerSpawner.prefix = os.environ["BENCH_PREFIX"]
c.DockerSpawner.remove = True
c.DockerSpawner.pull_policy = "never"
c.DockerSpawner.start_timeout = 120
c.DockerSpawner.http_timeout = 120
