#!/usr/bin/env bash
# Install yolo-supervisor as a systemd service on this server. Run as root; safe to run again
# (an upgrade: reinstalls the package and restarts the daemon, which re-adopts running training).
#
#   sudo ./scripts/install.sh [options]
#
# What it does:
#   1. creates a virtual environment in PREFIX and installs this checkout into it;
#   2. creates the system group and user yolo-supervisor (no login shell, home = HOME);
#   3. adds the user to the GPU device groups that exist (video, render);
#   4. creates HOME with the inbox (setgid, sticky, group-writable) and copies configs/daemon.yaml to
#      HOME/config.yaml unless one exists;
#   5. installs systemd/yolo-supervisor.service (paths adjusted to PREFIX and HOME),
#      links yolo-supervisorctl into /usr/local/bin, runs daemon-reload and enable --now.
#
# Options:
#   --prefix DIR        virtual environment (default /opt/yolo-supervisor)
#   --home DIR          the daemon's state directory (default /var/lib/yolo-supervisor)
#   --python PATH       interpreter for the venv (default python3; needs >= 3.10)
#   --operator USER     add USER to the yolo-supervisor group (may mutate jobs); repeatable
#   --no-start          install and enable, but do not start or restart the service
#   --dry-run           print the commands instead of running them
#   -h, --help          this text
set -euo pipefail

PREFIX=/opt/yolo-supervisor
STATE_HOME=/var/lib/yolo-supervisor
PYTHON=python3
SERVICE_USER=yolo-supervisor
UNIT=yolo-supervisor.service
START=1
DRY=0
OPERATORS=()
SRC="$(cd "$(dirname "$0")/.." && pwd)"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="$2"; shift 2 ;;
    --home) STATE_HOME="$2"; shift 2 ;;
    --python) PYTHON="$2"; shift 2 ;;
    --operator) OPERATORS+=("$2"); shift 2 ;;
    --no-start) START=0; shift ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

run() {
  if [ "$DRY" = 1 ]; then printf '+ %s\n' "$*"; else "$@"; fi
}

if [ "$DRY" = 0 ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (or with --dry-run to see what it would do)" >&2
  exit 1
fi

echo "== package: $SRC -> $PREFIX"
[ -x "$PREFIX/bin/python" ] || run "$PYTHON" -m venv "$PREFIX"
run "$PREFIX/bin/python" -m pip install -q --upgrade pip
run "$PREFIX/bin/python" -m pip install -q --upgrade "$SRC"
run install -d -m 0755 "$PREFIX/share/doc"
run install -m 0644 "$SRC/docs/control-plane.md" "$PREFIX/share/doc/control-plane.md"

echo "== user and group: $SERVICE_USER"
getent group "$SERVICE_USER" >/dev/null || run groupadd --system "$SERVICE_USER"
if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
  run useradd --system --gid "$SERVICE_USER" --home-dir "$STATE_HOME" --no-create-home \
    --shell /usr/sbin/nologin --comment "yolo-supervisor daemon" "$SERVICE_USER"
fi
for gpu_group in video render; do
  if getent group "$gpu_group" >/dev/null; then run usermod -aG "$gpu_group" "$SERVICE_USER"; fi
done
for op in "${OPERATORS[@]+"${OPERATORS[@]}"}"; do
  run usermod -aG "$SERVICE_USER" "$op"
done

echo "== state directory: $STATE_HOME"
run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_HOME"
# setgid + group-writable: operators drop job files here; the daemon moves them away.
run install -d -m 3770 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_HOME/inbox"  # sticky: members cannot move or replace one another's files, nor rejected/ and accepted/
if [ ! -e "$STATE_HOME/config.yaml" ]; then
  run install -m 0640 -o "$SERVICE_USER" -g "$SERVICE_USER" "$SRC/configs/daemon.yaml" "$STATE_HOME/config.yaml"
fi

echo "== systemd unit: /etc/systemd/system/$UNIT"
unit_text=$(sed -e "s#/opt/yolo-supervisor#$PREFIX#g" -e "s#/var/lib/yolo-supervisor#$STATE_HOME#g" \
  "$SRC/systemd/$UNIT")
if [ "$STATE_HOME" != /var/lib/yolo-supervisor ]; then
  # StateDirectory= only manages directories under /var/lib.
  unit_text=$(printf '%s\n' "$unit_text" | sed -e '/^StateDirectory/d' \
    -e "s#^\[Service\]#[Service]\nReadWritePaths=$STATE_HOME#")
fi
if [ "$DRY" = 1 ]; then
  echo "+ write /etc/systemd/system/$UNIT"
else
  printf '%s\n' "$unit_text" > "/etc/systemd/system/$UNIT.tmp"
  chmod 0644 "/etc/systemd/system/$UNIT.tmp"
  mv "/etc/systemd/system/$UNIT.tmp" "/etc/systemd/system/$UNIT"
fi
run ln -sfn "$PREFIX/bin/yolo-supervisorctl" /usr/local/bin/yolo-supervisorctl

run systemctl daemon-reload
was_active=0
systemctl is-active --quiet "$UNIT" 2>/dev/null && was_active=1
if [ "$START" = 1 ]; then
  run systemctl enable --now "$UNIT"
  # An upgrade: restart onto the new code (training keeps running and is re-adopted).
  if [ "$was_active" = 1 ]; then run systemctl restart "$UNIT"; fi
  echo "== done: systemctl status $UNIT; yolo-supervisorctl --home $STATE_HOME status"
else
  run systemctl enable "$UNIT"
  echo "== installed, not started: systemctl start $UNIT"
fi
