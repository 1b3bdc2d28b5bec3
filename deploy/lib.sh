# Shared set-up steps of deploy/demo and deploy/test. Every step is idempotent: it checks, then acts.
# Sourced, not run. Needs root on Debian 12.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ENCLAVE_VENV:-$REPO/.venv}"
NODE_PREFIX="${ENCLAVE_NODE_PREFIX:-/opt/enclave/node}"
CHP_VERSION="5.3.0"
CHP="$NODE_PREFIX/node_modules/.bin/configurable-http-proxy"
PY="$VENV/bin/python"
export DEBIAN_FRONTEND=noninteractive

say() { printf '==> [%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'deploy: %s\n' "$*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root (it installs Debian packages and manages dockerd and iptables)"; }

ensure_packages() {
  local wanted=(slapd ldap-utils debootstrap iptables python3 python3-venv ca-certificates curl procps e2fsprogs squashfs-tools lxcfs tcpdump "$@")
  local missing=()
  for p in "${wanted[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  # Any Docker engine will do (Debian's docker.io, or Docker CE already there).
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  # Node.js may come from elsewhere (e.g. NodeSource, whose nodejs conflicts with Debian's npm): only
  # install Debian's when there is no npm at all.
  command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  # slapd's own service is not used (deploy/localldap.py runs ours); do not let postinst start daemons.
  local saved=""; [ -e /usr/sbin/policy-rc.d ] && saved="$(mktemp)" && cp -p /usr/sbin/policy-rc.d "$saved"
  restore() { if [ -n "$saved" ]; then mv "$saved" /usr/sbin/policy-rc.d; else rm -f /usr/sbin/policy-rc.d; fi; }
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  apt-get update -qq || { restore; die "apt-get update failed: are Debian's package mirrors reachable?"; }
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || { restore; die "apt-get install ${missing[*]} failed"; }
  restore
  # Debian's own slapd service would listen on every address after a reboot; the enclave runs its own.
  if [ -d /run/systemd/system ]; then systemctl disable --now slapd >/dev/null 2>&1 || true; fi
}

ensure_loop_devices() {
  # Workspace quotas are loop-mounted ext4 filesystems (hub/workspace.py).
  [ -e /dev/loop-control ] || modprobe loop 2>/dev/null || true
  [ -e /dev/loop-control ] || die "no loop devices (/dev/loop-control): workspace quotas need them (modprobe loop)"
}

LXCFS_DIR=/var/lib/lxcfs
ensure_lxcfs() {
  # Per-container /proc/meminfo, stat, loadavg, diskstats, ... (hub/security_profile.py LXCFS_FILES): the
  # kernel's own are host-wide, a view of other projects and a covert channel between them. -l: loadavg too.
  [ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
  [ -e /dev/fuse ] || die "no /dev/fuse: lxcfs needs FUSE (modprobe fuse); the hub refuses to spawn without it"
  if mountpoint -q "$LXCFS_DIR" && head -c1 "$LXCFS_DIR/proc/meminfo" >/dev/null 2>&1; then return 0; fi
  say "starting lxcfs on $LXCFS_DIR"
  # A dead lxcfs leaves its mount behind ("Transport endpoint is not connected"): clear it first.
  # mountpoint(1) cannot stat a dead FUSE mount, so look for it in the mount table.
  while awk -v d="$LXCFS_DIR" '$2 == d { found = 1 } END { exit !found }' /proc/self/mounts; do
    umount -l "$LXCFS_DIR" 2>/dev/null || fusermount -uz "$LXCFS_DIR" 2>/dev/null \
      || die "a dead lxcfs mount at $LXCFS_DIR cannot be removed (umount -l $LXCFS_DIR)"
  done
  mkdir -p "$LXCFS_DIR"
  if [ -d /run/systemd/system ]; then
    mkdir -p /etc/systemd/system/lxcfs.service.d
    printf '[Service]\nExecStart=\nExecStart=/usr/bin/lxcfs -l %s\n' "$LXCFS_DIR" \
      > /etc/systemd/system/lxcfs.service.d/enclave.conf
    systemctl daemon-reload; systemctl enable lxcfs >/dev/null 2>&1 || true
    systemctl restart lxcfs || die "systemctl restart lxcfs failed: see journalctl -u lxcfs"
  else
    setsid nohup /usr/bin/lxcfs -f -l "$LXCFS_DIR" </dev/null >>/var/log/enclave-lxcfs.log 2>&1 &
  fi
  for _ in $(seq 1 20); do
    mountpoint -q "$LXCFS_DIR" && head -c1 "$LXCFS_DIR/proc/meminfo" >/dev/null 2>&1 && return 0; sleep 0.5
  done
  die "lxcfs did not come up on $LXCFS_DIR (see /var/log/enclave-lxcfs.log or journalctl -u lxcfs)"
}

ensure_dockerd() {
  if docker info >/dev/null 2>&1; then return 0; fi
  say "starting the Docker engine"
  if [ -d /run/systemd/system ]; then
    systemctl start docker || die "systemctl start docker failed: see journalctl -u docker"
  else
    setsid nohup dockerd </dev/null >/var/log/enclave-dockerd.log 2>&1 &
  fi
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && return 0; sleep 1; done
  die "the Docker engine did not come up within 60 s (see /var/log/enclave-dockerd.log or journalctl -u docker)"
}

ensure_chp() {
  if [ -x "$CHP" ] && "$CHP" --version 2>/dev/null | grep -q "$CHP_VERSION"; then return 0; fi
  say "installing configurable-http-proxy $CHP_VERSION (npm)"
  mkdir -p "$NODE_PREFIX"
  npm install --silent --no-fund --no-audit --prefix "$NODE_PREFIX" "configurable-http-proxy@$CHP_VERSION" >/dev/null \
    || die "npm install configurable-http-proxy@$CHP_VERSION failed"
}

ensure_venv() {
  local stamp="$VENV/.enclave-installed"
  local want; want="$(cat "$REPO/pyproject.toml" "$REPO/deploy/constraints.txt" | sha256sum | cut -c1-16):$REPO"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  say "creating the Python environment $VENV"
  [ -x "$PY" ] || /usr/bin/python3 -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv)"
  "$PY" -m pip install -q --disable-pip-version-check -e "$REPO[test]" -c "$REPO/deploy/constraints.txt" \
    || die "pip install failed"
  echo "$want" > "$stamp"
}

ensure_images() {
  say "building images (only what changed)"
  NOTEBOOK_IMAGE="$(ENCLAVE_PYTHON="$PY" "$REPO/images/build")" || die "images/build failed"
  export NOTEBOOK_IMAGE
}

# secret NAME: create STATE/secrets/NAME (random, mode 600) once.
ensure_secret() {
  local file="$STATE/secrets/$1"
  install -d -m 700 "$STATE/secrets"
  [ -s "$file" ] && return 0
  (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$file.tmp" && mv "$file.tmp" "$file")
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_http() {  # url seconds
  for _ in $(seq 1 "$2"); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 1; done
  return 1
}
