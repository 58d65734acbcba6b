#!/usr/bin/env bash
# Install, upgrade or remove scan-agent on a Raspberry Pi (or any systemd machine).
#
#   sudo systemd/install.sh                                  software, units, user, rules only
#   sudo systemd/install.sh --dock dock-3 --site WH1 --ledger-url http://ledger:8080 \
#                           --token-file /tmp/dock-3.token   ... and a dock, started
#   sudo systemd/install.sh --uninstall                      remove software, units, rules;
#                                                            keep configs, tokens and journals
#   systemd/install.sh --root /tmp/stage --no-venv ...       into a staging directory
#
# Running it again is safe: files are replaced, an existing dock config is kept, a given token
# file replaces the old token (that is how tokens are rotated), running docks are restarted.
set -euo pipefail

PROG=${0##*/}
SRC=$(cd -- "$(dirname -- "$0")/.." && pwd)

ROOT=""
DOCK=""
SITE=""
LEDGER_URL=""
TOKEN_FILE=""
PYTHON=python3
WHEELS=""
WITH_VENV=1
WITH_GPIO=auto
START=1
UNINSTALL=0

PREFIX=/opt/scan-agent
UNIT_DIR=/usr/local/lib/systemd/system
SYSUSERS_DIR=/usr/local/lib/sysusers.d
TMPFILES_DIR=/usr/local/lib/tmpfiles.d
UDEV_DIR=/usr/local/lib/udev/rules.d
CONF_DIR=/etc/scan-agent
STATE_ROOT=/var/lib/scan-agent

usage() {
    cat <<EOF
Usage: $PROG [--dock NAME --site SITE --ledger-url URL [--token-file FILE]] [options]
       $PROG --uninstall [--root DIR]

Installs scan-agent into $PREFIX/venv, the unit scan-agent@.service, the scan-agent system
user, udev rules and tmpfiles; with --dock, also /etc/scan-agent/NAME.toml and its token, and
enables (and, with a token, starts) scan-agent@NAME.service.

Options:
  --dock NAME          dock (station) id, e.g. dock-3; the unit instance name
  --site SITE          warehouse / business unit id, e.g. WH1 (needed for a new dock)
  --ledger-url URL     base URL of the central ledger (needed for a new dock)
  --token-file FILE    the station token printed by 'scan-ledger station add'; copied to
                       /etc/scan-agent/NAME.token (mode 0600); replaces an existing token
  --root DIR           install into DIR as a staging root: no systemctl/udevadm calls
  --no-venv            do not create or update the virtual environment
  --python PY          Python used for the venv (default: python3; needs 3.11 or later)
  --wheels DIR         install from wheels in DIR only (offline: pip --no-index)
  --gpio / --no-gpio   install gpiozero and lgpio for buzzer/LEDs (default: on a Raspberry Pi)
  --no-start           enable the dock but do not (re)start it
  --uninstall          remove software, units, rules; keep configs, tokens and journals
  -h, --help           this text
EOF
}

die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
say() { printf '%s: %s\n' "$PROG" "$*"; }

need_arg() {
    if [ "$#" -lt 2 ] || [ -z "$2" ]; then
        die "$1 needs a value"
    fi
}

while [ "$#" -gt 0 ]; do
    case $1 in
        --dock) need_arg "$@"; DOCK=$2; shift 2 ;;
        --site) need_arg "$@"; SITE=$2; shift 2 ;;
        --ledger-url) need_arg "$@"; LEDGER_URL=$2; shift 2 ;;
        --token-file) need_arg "$@"; TOKEN_FILE=$2; shift 2 ;;
        --root) need_arg "$@"; ROOT=$2; shift 2 ;;
        --python) need_arg "$@"; PYTHON=$2; shift 2 ;;
        --wheels) need_arg "$@"; WHEELS=$2; shift 2 ;;
        --no-venv) WITH_VENV=0; shift ;;
        --gpio) WITH_GPIO=1; shift ;;
        --no-gpio) WITH_GPIO=0; shift ;;
        --no-start) START=0; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

if [ -n "$ROOT" ]; then
    mkdir -p -- "$ROOT"
    ROOT=$(cd -- "$ROOT" && pwd)
    [ "$ROOT" != / ] || ROOT=""
fi
LIVE=1
[ -z "$ROOT" ] || LIVE=0
IS_ROOT=0
[ "$(id -u)" -ne 0 ] || IS_ROOT=1
if [ "$LIVE" = 1 ] && [ "$IS_ROOT" = 0 ]; then
    die "run as root (sudo), or use --root DIR to stage the files"
fi

# The same rule as the config's ids: letters, digits, '.', '_', '-'; at most 64.
valid_id() { printf '%s' "$1" | grep -Eq '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'; }

run_systemctl() {
    if [ "$LIVE" = 1 ] && [ -d /run/systemd/system ]; then
        systemctl "$@"
    else
        say "skipped (no running systemd here): systemctl $*"
    fi
}

reload_udev() {
    if [ "$LIVE" = 1 ] && [ -d /run/systemd/system ] && command -v udevadm >/dev/null; then
        udevadm control --reload
        udevadm trigger --action=change --subsystem-match=input --subsystem-match=tty
    else
        say "skipped (no running udev here): udevadm control --reload"
    fi
}

# install MODE SRC DEST: copy a file atomically (write a temp file, then rename).
put() {
    local mode=$1 src=$2 dest=$ROOT$3 tmp
    mkdir -p -- "$(dirname -- "$dest")"
    tmp=$(mktemp "$dest.XXXXXX")
    cat -- "$src" >"$tmp"
    chmod "$mode" "$tmp"
    mv -f -- "$tmp" "$dest"
    say "installed $3"
}

uninstall() {
    local units
    if [ "$LIVE" = 1 ] && [ -d /run/systemd/system ]; then
        units=$(systemctl list-units --all --plain --no-legend 'scan-agent@*.service' |
            awk '{print $1}')
        for unit in $units; do
            systemctl disable --now "$unit" || true
        done
        # Instances enabled but not loaded still have their wants symlinks.
        systemctl disable 'scan-agent@.service' 2>/dev/null || true
    fi
    rm -f -- "$ROOT$UNIT_DIR/scan-agent@.service" \
        "$ROOT$SYSUSERS_DIR/scan-agent.conf" \
        "$ROOT$TMPFILES_DIR/scan-agent.conf" \
        "$ROOT$UDEV_DIR/60-scan-agent.rules" \
        "$ROOT/usr/local/bin/scan-agent"
    find "$ROOT/etc/systemd/system" -name 'scan-agent@*.service' -type l -delete 2>/dev/null ||
        true
    rm -rf -- "$ROOT$PREFIX"
    run_systemctl daemon-reload
    reload_udev
    say "removed scan-agent; kept $CONF_DIR (configs, tokens) and $STATE_ROOT (journals)"
    say "the scan-agent user is kept too, so journal files never change owner"
}

if [ "$UNINSTALL" = 1 ]; then
    uninstall
    exit 0
fi

# --- check the arguments before changing anything --------------------------------------------
CONF=""
if [ -n "$DOCK" ]; then
    valid_id "$DOCK" || die "--dock: '$DOCK' is not a valid id (letters, digits, . _ -)"
    CONF=$CONF_DIR/$DOCK.toml
    if [ ! -e "$ROOT$CONF" ]; then
        [ -n "$SITE" ] || die "--site is needed for a new dock ($CONF does not exist)"
        [ -n "$LEDGER_URL" ] || die "--ledger-url is needed for a new dock ($CONF does not exist)"
    fi
    if [ -n "$SITE" ]; then
        valid_id "$SITE" || die "--site: '$SITE' is not a valid id (letters, digits, . _ -)"
    fi
    if [ -n "$LEDGER_URL" ]; then
        printf '%s' "$LEDGER_URL" | grep -Eq '^https?://[^[:space:]/"\\]+[^[:space:]"\\]*$' ||
            die "--ledger-url: expected an http:// or https:// URL, got '$LEDGER_URL'"
    fi
    if [ -n "$TOKEN_FILE" ]; then
        if [ ! -f "$TOKEN_FILE" ] || [ ! -r "$TOKEN_FILE" ]; then
            die "--token-file: cannot read $TOKEN_FILE"
        fi
        # The token itself is never printed.
        [ -n "$(tr -d '[:space:]' <"$TOKEN_FILE")" ] || die "--token-file: $TOKEN_FILE is empty"
    fi
elif [ -n "$SITE$LEDGER_URL$TOKEN_FILE" ]; then
    die "--site, --ledger-url and --token-file need --dock"
fi
[ -f "$SRC/pyproject.toml" ] || die "$SRC does not look like the scan-agent source tree"

if [ "$WITH_GPIO" = auto ]; then
    WITH_GPIO=0
    if grep -qs 'Raspberry Pi' "$ROOT/proc/device-tree/model" 2>/dev/null; then
        WITH_GPIO=1
    fi
fi

# --- the application's own virtual environment ---------------------------------------------
VENV=$PREFIX/venv
if [ "$WITH_VENV" = 1 ]; then
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "$PYTHON is older than Python 3.11"
    if [ ! -x "$ROOT$VENV/bin/python" ]; then
        say "creating $VENV"
        "$PYTHON" -m venv "$ROOT$VENV"
    fi
    pip_args=(--disable-pip-version-check --quiet)
    if [ -n "$WHEELS" ]; then
        pip_args+=(--no-index --find-links "$WHEELS")
    fi
    # wedge: keyboard-wedge scanners' layouts (libxkbcommon's binding, built here).
    target="${SRC}[wedge]"
    if [ "$WITH_GPIO" = 1 ]; then
        target="${SRC}[wedge,gpio]"
    fi
    say "installing scan-agent into $VENV"
    "$ROOT$VENV/bin/python" -m pip install "${pip_args[@]}" --upgrade "$target"
    if [ "$WITH_GPIO" = 1 ]; then
        # gpiozero's pin factory on bookworm (and the only one on a Pi 5).
        "$ROOT$VENV/bin/python" -m pip install "${pip_args[@]}" --upgrade lgpio ||
            say "warning: could not install lgpio; GPIO feedback will not work"
    fi
    if [ -n "$ROOT" ]; then
        # A venv records its absolute path; make it the path it will have on the target.
        staged=$(printf '%s' "$ROOT$VENV" | sed 's/[][\\.*^$|]/\\&/g')
        grep -rlF -- "$ROOT$VENV" "$ROOT$VENV/bin" "$ROOT$VENV/pyvenv.cfg" 2>/dev/null |
            while IFS= read -r f; do
                sed -i "s|$staged|$VENV|g" "$f"
            done
    fi
    mkdir -p -- "$ROOT/usr/local/bin"
    ln -sfn -- "$VENV/bin/scan-agent" "$ROOT/usr/local/bin/scan-agent"
fi

# --- units, user, directories, device rules ---------------------------------------------------
put 0644 "$SRC/systemd/scan-agent@.service" "$UNIT_DIR/scan-agent@.service"
put 0644 "$SRC/systemd/tmpfiles.d/scan-agent.conf" "$TMPFILES_DIR/scan-agent.conf"
put 0644 "$SRC/systemd/udev/60-scan-agent.rules" "$UDEV_DIR/60-scan-agent.rules"
sysusers_tmp=$(mktemp)
trap 'rm -f -- "$sysusers_tmp"' EXIT
cat -- "$SRC/systemd/sysusers.d/scan-agent.conf" >"$sysusers_tmp"
if grep -qs '^gpio:' "$ROOT/etc/group"; then
    printf '%s\n' "m scan-agent gpio" >>"$sysusers_tmp"
fi
put 0644 "$sysusers_tmp" "$SYSUSERS_DIR/scan-agent.conf"
put 0644 "$SRC/systemd/dock.example.toml" "$PREFIX/share/dock.example.toml"
if [ -f "$SRC/docs/deploy.md" ]; then
    put 0644 "$SRC/docs/deploy.md" "$PREFIX/docs/deploy.md"
fi

if [ "$IS_ROOT" = 1 ]; then
    root_args=()
    if [ -n "$ROOT" ]; then
        root_args=(--root "$ROOT")
        mkdir -p -- "$ROOT/etc"
    fi
    systemd-sysusers "${root_args[@]}" "$ROOT$SYSUSERS_DIR/scan-agent.conf"
    systemd-tmpfiles --create "${root_args[@]}" "$ROOT$TMPFILES_DIR/scan-agent.conf"
else
    say "not root: the scan-agent user and directories are created on the target by"
    say "  systemd-sysusers and systemd-tmpfiles at boot (files in $SYSUSERS_DIR, $TMPFILES_DIR)"
    mkdir -p -- "$ROOT$CONF_DIR" "$ROOT$STATE_ROOT/metrics"
fi
reload_udev
run_systemctl daemon-reload

# --- the dock ---------------------------------------------------------------------------------
if [ -n "$DOCK" ]; then
    if [ -e "$ROOT$CONF" ]; then
        say "kept the existing $CONF"
    else
        conf_tmp=$(mktemp)
        trap 'rm -f -- "$sysusers_tmp" "$conf_tmp"' EXIT
        cat >"$conf_tmp" <<EOF
# Dock $DOCK: see $PREFIX/share/dock.example.toml for every key.
station = "$DOCK"
site = "$SITE"
mode = "receipt"
location = "$(printf '%s' "$DOCK" | tr '[:lower:]' '[:upper:]')"
database = "$STATE_ROOT/$DOCK/journal.db"

[ledger]
url = "$LEDGER_URL"
token_file = "$CONF_DIR/$DOCK.token"   # the unit passes it as the credential ledger-token

[metrics]
textfile = "$STATE_ROOT/metrics/$DOCK.prom"

# Add this dock's scanners; 'scan-agent devices' prints a snippet for each one plugged in.
# [[scanners]]
# name = "handheld"
# driver = "serial"
# port = "/dev/ttyACM0"
EOF
        put 0640 "$conf_tmp" "$CONF"
        if [ "$IS_ROOT" = 1 ]; then
            chown "root:$(grep -s '^scan-agent:' "$ROOT/etc/group" | cut -d: -f3)" "$ROOT$CONF"
        fi
    fi
    if [ -n "$TOKEN_FILE" ]; then
        put 0600 "$TOKEN_FILE" "$CONF_DIR/$DOCK.token"
        if [ "$IS_ROOT" = 1 ]; then
            chown 0:0 "$ROOT$CONF_DIR/$DOCK.token"
        fi
    fi
    if [ -x "$ROOT$VENV/bin/scan-agent" ] && [ -z "$ROOT" ]; then
        # A starter config has no scanner yet (and maybe no token): say what is missing
        # rather than stop the install half-way.
        "$VENV/bin/scan-agent" check-config "$CONF" ||
            say "dock $DOCK is not ready yet (above); fix $CONF, then: sudo scan-agent check-config $CONF"
    fi
    if [ "$LIVE" = 1 ]; then
        run_systemctl enable "scan-agent@$DOCK.service"
    else
        mkdir -p -- "$ROOT/etc/systemd/system/multi-user.target.wants"
        ln -sfn -- "$UNIT_DIR/scan-agent@.service" \
            "$ROOT/etc/systemd/system/multi-user.target.wants/scan-agent@$DOCK.service"
        say "enabled scan-agent@$DOCK.service"
    fi
fi

if [ "$START" = 1 ]; then
    # Running docks get the new code (an upgrade) and a rotated token.
    run_systemctl try-restart 'scan-agent@*.service'
fi
if [ -n "$DOCK" ]; then
    if [ ! -e "$ROOT$CONF_DIR/$DOCK.token" ]; then
        say "no token yet: put the token from 'scan-ledger station add $DOCK --site ...' into"
        say "  $CONF_DIR/$DOCK.token (mode 0600), then: systemctl start scan-agent@$DOCK"
    elif [ "$START" = 1 ]; then
        run_systemctl start "scan-agent@$DOCK.service"
    fi
fi
say "done"
