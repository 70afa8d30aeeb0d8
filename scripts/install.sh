#!/usr/bin/env bash
# Install yolo-supervisor as a systemd service on this server. Run as root; safe to run again
# (an upgrade: reinstalls the package, keeps HOME/config.yaml and the state, and restarts the
# daemon, which re-adopts the training that is running).
#
#   sudo ./scripts/install.sh [options]
#
# What it does:
#   1. creates the system group and user yolo-supervisor (no login shell, home = HOME), adds it
#      to the GPU device groups that exist (video, render) and each --operator to its group;
#   2. picks a Python (>= 3.10) that the service user can run: --python, else /usr/bin/python3,
#      /usr/local/bin/python3, python3 on PATH (a per-user Python, e.g. pyenv under /root, is
#      refused: the service could not start from it), and creates a virtual environment in
#      PREFIX from it (an existing one is reused if the service user can run it);
#   3. installs this checkout into it, with the exact versions of constraints.txt;
#   4. creates HOME (0750) with the inbox (3770: setgid, sticky, group-writable) and copies
#      configs/daemon.yaml to HOME/config.yaml unless one exists;
#   5. installs systemd/yolo-supervisor.service (paths, user and group adjusted), the docs into
#      PREFIX/share/doc/yolo-supervisor, links yolo-supervisorctl into /usr/local/bin;
#   6. where systemd runs: daemon-reload, enable, and start (or restart, on an upgrade).
#
# Options:
#   --prefix DIR            virtual environment (default /opt/yolo-supervisor)
#   --home DIR              the daemon's state directory (default /var/lib/yolo-supervisor)
#   --python PATH           interpreter for the venv (default: see 2. above)
#   --operator USER         add USER to the service group (may submit/stop/start jobs); repeatable
#   --user NAME             service user and group (default yolo-supervisor)
#   --constraints FILE      pip constraints (default constraints.txt of this checkout)
#   --no-constraints        let pip choose versions within pyproject.toml's ranges (keeps an
#                           installed torch that satisfies them)
#   --system-site-packages  the venv also sees the interpreter's site-packages (an existing CUDA
#                           build of torch there is used); implies --no-constraints unless
#                           --constraints is given
#   --unit-dir DIR          where the unit goes (default /etc/systemd/system)
#   --bin-dir DIR           where yolo-supervisorctl is linked (default /usr/local/bin)
#   --no-start              install and enable, but do not start or restart the service
#   --dry-run               print the commands instead of running them
#   -h, --help              this text
set -euo pipefail
umask 022  # the service user and the operators must be able to read what is installed

PREFIX=/opt/yolo-supervisor
STATE_HOME=/var/lib/yolo-supervisor
PYTHON=
SERVICE_USER=yolo-supervisor
UNIT=yolo-supervisor.service
UNIT_DIR=/etc/systemd/system
BIN_DIR=/usr/local/bin
SRC="$(cd "$(dirname "$0")/.." && pwd)"
CONSTRAINTS=
CONSTRAINTS_SET=0
SYSTEM_SITE=0
START=1
DRY=0
OPERATORS=()

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "install.sh: $*" >&2; exit 1; }

need_value() { [ $# -ge 2 ] && [ -n "$2" ] || { echo "install.sh: $1 needs a value (see --help)" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) need_value "$@"; PREFIX="$2"; shift 2 ;;
    --home) need_value "$@"; STATE_HOME="$2"; shift 2 ;;
    --python) need_value "$@"; PYTHON="$2"; shift 2 ;;
    --operator) need_value "$@"; OPERATORS+=("$2"); shift 2 ;;
    --user) need_value "$@"; SERVICE_USER="$2"; shift 2 ;;
    --constraints) need_value "$@"; CONSTRAINTS="$2"; CONSTRAINTS_SET=1; shift 2 ;;
    --no-constraints) CONSTRAINTS=; CONSTRAINTS_SET=1; shift ;;
    --system-site-packages) SYSTEM_SITE=1; shift ;;
    --unit-dir) need_value "$@"; UNIT_DIR="$2"; shift 2 ;;
    --bin-dir) need_value "$@"; BIN_DIR="$2"; shift 2 ;;
    --no-start) START=0; shift ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$CONSTRAINTS_SET" = 0 ]; then
  if [ "$SYSTEM_SITE" = 1 ]; then CONSTRAINTS=; else CONSTRAINTS="$SRC/constraints.txt"; fi
fi
[ -z "$CONSTRAINTS" ] || [ -f "$CONSTRAINTS" ] || die "no constraints file $CONSTRAINTS"

for path in "$PREFIX" "$STATE_HOME" "$UNIT_DIR" "$BIN_DIR"; do
  case "$path" in
    /*) ;;
    *) die "$path: give an absolute path" ;;
  esac
  case "$path" in
    *[[:space:]#\'\"\\]*) die "$path: no spaces, quotes, backslashes or '#' (it goes into the unit file)" ;;
  esac
done
case "$SERVICE_USER" in
  ''|*[!a-z0-9_-]*|[!a-z_]*) die "--user $SERVICE_USER: a lower-case user name ([a-z_][a-z0-9_-]*)" ;;
esac

run() {
  if [ "$DRY" = 1 ]; then printf '+ %s\n' "$*"; else "$@"; fi
}

if [ "$DRY" = 0 ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (or with --dry-run to see what it would do)" >&2
  exit 1
fi
for op in "${OPERATORS[@]+"${OPERATORS[@]}"}"; do
  [ "$DRY" = 1 ] || id -u "$op" >/dev/null 2>&1 || die "--operator $op: no such user"
done

# Run a command as the service user (with its groups, as systemd's User= does).
as_service_user() {
  if command -v runuser >/dev/null 2>&1; then
    runuser -u "$SERVICE_USER" -- "$@"
  else
    setpriv --reuid "$SERVICE_USER" --regid "$SERVICE_USER" --init-groups -- "$@"
  fi
}

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

# The interpreter behind PATH (a venv's or a shim's base resolved), or nothing.
base_interpreter() {
  local exe
  exe=$(command -v "$1" 2>/dev/null) || return 1
  "$exe" -c 'import os, sys; print(os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable))' \
    2>/dev/null
}

# Why the service user could not use this interpreter for its venv; nothing when it can.
python_problem() {
  local py="$1" base
  base=$(base_interpreter "$py") || { echo "$py: not found or does not run"; return; }
  "$base" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null \
    || { echo "$base: Python >= 3.10 needed"; return; }
  "$base" -c 'import venv, ensurepip' 2>/dev/null \
    || { echo "$base: no venv/ensurepip module (Debian, Ubuntu: apt-get install python3-venv)"; return; }
  # (In a dry run, checked only when the user already exists.)
  if id -u "$SERVICE_USER" >/dev/null 2>&1 && ! as_service_user "$base" -c 'import sys' >/dev/null 2>&1; then
    echo "$base: the service user $SERVICE_USER cannot run it (a directory on its path is closed to other users, e.g. a per-user pyenv under /root)"
  fi
}

echo "== Python for the service"
if [ -n "$PYTHON" ]; then
  candidates=("$PYTHON")
else
  candidates=(/usr/bin/python3 /usr/local/bin/python3 python3)
fi
CHOSEN=
for py in "${candidates[@]}"; do
  [ -n "$PYTHON" ] || command -v "$py" >/dev/null 2>&1 || continue
  problem=$(python_problem "$py")
  if [ -z "$problem" ]; then CHOSEN=$(base_interpreter "$py"); break; fi
  echo "   not $problem"
  [ -z "$PYTHON" ] || die "--python $PYTHON cannot be used for the service; give another --python"
done
[ -n "$CHOSEN" ] || die "no Python >= 3.10 that $SERVICE_USER can run; install one system-wide (apt-get install python3 python3-venv) or give --python PATH"
echo "   $CHOSEN ($("$CHOSEN" -c 'import platform; print(platform.python_version())'))"

echo "== package: $SRC -> $PREFIX"
venv_args=()
[ "$SYSTEM_SITE" = 0 ] || venv_args+=(--system-site-packages)
if [ -x "$PREFIX/bin/python" ]; then
  [ -f "$PREFIX/pyvenv.cfg" ] || die "$PREFIX exists and is not a virtual environment"
  current=$(base_interpreter "$PREFIX/bin/python" || true)
  if [ "$DRY" = 0 ] && ! as_service_user "$PREFIX/bin/python" -c 'import sys' >/dev/null 2>&1; then
    echo "   the existing venv's interpreter ($current) cannot be run by $SERVICE_USER: recreating it"
    run "$CHOSEN" -m venv --clear "${venv_args[@]+"${venv_args[@]}"}" "$PREFIX"
  elif [ -n "$PYTHON" ] && [ "$current" != "$CHOSEN" ]; then
    echo "   the existing venv is built on $current, --python asks for $CHOSEN: recreating it"
    run "$CHOSEN" -m venv --clear "${venv_args[@]+"${venv_args[@]}"}" "$PREFIX"
  elif [ "$SYSTEM_SITE" = 1 ]; then
    run sed -i 's/^include-system-site-packages = .*/include-system-site-packages = true/' "$PREFIX/pyvenv.cfg"
  fi
else
  [ ! -e "$PREFIX" ] || [ -z "$(ls -A "$PREFIX" 2>/dev/null)" ] || die "$PREFIX exists, is not empty and is not a virtual environment"
  run "$CHOSEN" -m venv "${venv_args[@]+"${venv_args[@]}"}" "$PREFIX"
fi
pip_args=(-q)
[ -z "$CONSTRAINTS" ] || pip_args+=(-c "$CONSTRAINTS")
run "$PREFIX/bin/python" -m pip install -q --upgrade pip || echo "   (pip not upgraded; going on with the venv's own)"
# A local directory is always rebuilt and reinstalled; dependencies only when needed.
run "$PREFIX/bin/python" -m pip install "${pip_args[@]}" "$SRC"
DOC_DIR="$PREFIX/share/doc/yolo-supervisor"
# The README's relative links (docs/..., docs/img/...) keep working from there.
run install -d -m 0755 "$DOC_DIR" "$DOC_DIR/docs"
run install -m 0644 "$SRC/README.md" "$DOC_DIR/"
run install -m 0644 "$SRC"/docs/*.md "$DOC_DIR/docs/"
if [ -d "$SRC/docs/img" ]; then
  run install -d -m 0755 "$DOC_DIR/docs/img"
  run install -m 0644 "$SRC"/docs/img/* "$DOC_DIR/docs/img/"
fi

echo "== state directory: $STATE_HOME"
run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_HOME"
# setgid + group-writable: operators drop job files here; the daemon moves them away.
run install -d -m 3770 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_HOME/inbox"  # sticky: members cannot move or replace one another's files, nor rejected/ and accepted/
if [ -e "$STATE_HOME/config.yaml" ]; then
  echo "   keeping $STATE_HOME/config.yaml"
elif [ "$DRY" = 1 ]; then
  echo "+ install -m 0640 -o $SERVICE_USER -g $SERVICE_USER configs/daemon.yaml $STATE_HOME/config.yaml (socket_group: $SERVICE_USER)"
else
  sed -e "s/^socket_group: yolo-supervisor\$/socket_group: $SERVICE_USER/" "$SRC/configs/daemon.yaml" \
    > "$STATE_HOME/config.yaml.tmp"
  chown "$SERVICE_USER:$SERVICE_USER" "$STATE_HOME/config.yaml.tmp"
  chmod 0640 "$STATE_HOME/config.yaml.tmp"
  mv "$STATE_HOME/config.yaml.tmp" "$STATE_HOME/config.yaml"
fi

echo "== systemd unit: $UNIT_DIR/$UNIT"
unit_text=$(sed -e "s#/opt/yolo-supervisor#$PREFIX#g" -e "s#/var/lib/yolo-supervisor#$STATE_HOME#g" \
  -e "s#^User=.*#User=$SERVICE_USER#" -e "s#^Group=.*#Group=$SERVICE_USER#" "$SRC/systemd/$UNIT")
case "$STATE_HOME" in
  /var/lib/*/*|/var/lib/) state_dir= ;;
  /var/lib/*) state_dir=${STATE_HOME#/var/lib/} ;;
  *) state_dir= ;;
esac
if [ -n "$state_dir" ]; then
  unit_text=$(printf '%s\n' "$unit_text" | sed -e "s#^StateDirectory=.*#StateDirectory=$state_dir#")
else
  # StateDirectory= only manages directories directly under /var/lib.
  unit_text=$(printf '%s\n' "$unit_text" | sed -e '/^StateDirectory/d' \
    -e "s#^\[Service\]#[Service]\nReadWritePaths=$STATE_HOME#")
fi
if [ "$DRY" = 1 ]; then
  echo "+ write $UNIT_DIR/$UNIT"
else
  install -d -m 0755 "$UNIT_DIR"
  printf '%s\n' "$unit_text" > "$UNIT_DIR/$UNIT.tmp"
  chmod 0644 "$UNIT_DIR/$UNIT.tmp"
  mv "$UNIT_DIR/$UNIT.tmp" "$UNIT_DIR/$UNIT"
fi
run install -d -m 0755 "$BIN_DIR"
run ln -sfn "$PREFIX/bin/yolo-supervisorctl" "$BIN_DIR/yolo-supervisorctl"

if [ "$DRY" = 0 ] && [ ! -d /run/systemd/system ]; then
  echo "== systemd is not running on this machine: the unit is written but not enabled or started."
  echo "   Start the daemon by hand as $SERVICE_USER: $PREFIX/bin/yolo-supervisord --home $STATE_HOME"
  exit 0
fi
if [ "$UNIT_DIR" != /etc/systemd/system ]; then
  echo "== unit written to $UNIT_DIR (not /etc/systemd/system): not enabled or started"
  exit 0
fi
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
