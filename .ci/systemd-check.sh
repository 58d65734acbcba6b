#!/usr/bin/env bash
# Checks of the systemd integration that need no running systemd (systemd 252 or later):
#   - the installer into a scratch staging root: expected files, modes, idempotence, uninstall
#   - systemd-analyze verify of the staged unit (any message fails)
#   - systemd-analyze security --offline=yes at exposure 2.0 or lower
#   - systemd-sysusers --dry-run and systemd-tmpfiles --create into scratch roots
#   - the example dock config and the generated one load
#   - the ledger's unit (verify, security), its sysusers line and its example config
#   - udev rules use final (:=) assignments; shellcheck when installed
# Exits non-zero when anything failed, after running every check and naming what failed.
set -euo pipefail

HERE=$(cd -- "$(dirname -- "$0")/.." && pwd)
cd -- "$HERE"
PY=${PYTHON:-$HERE/.venv/bin/python}
[ -x "$PY" ] || PY=python3
THRESHOLD=20 # systemd-analyze counts exposure in tenths: 20 is 2.0
DOCK=dock-3
UNIT=scan-agent@$DOCK.service

FAILED=()
WORK=$(mktemp -d)
trap 'rm -rf -- "$WORK"' EXIT

ok() { printf 'ok: %s\n' "$*"; }
fail() {
    printf 'FAIL: %s\n' "$*" >&2
    FAILED+=("$*")
}
# check NAME COMMAND...: run a command quietly, showing its output only when it fails.
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then
        ok "$name"
    else
        fail "$name"
        printf '%s\n' "$out" | sed 's/^/    /' >&2
    fi
}

for tool in systemd-analyze systemd-sysusers systemd-tmpfiles; do
    command -v "$tool" >/dev/null || fail "$tool is not installed (apt-get install systemd)"
done
if [ "${#FAILED[@]}" -gt 0 ]; then
    exit 1
fi
IS_ROOT=0
[ "$(id -u)" -ne 0 ] || IS_ROOT=1

# --- the installer, into a scratch staging root ----------------------------------------------
STAGE=$WORK/stage
TOKEN=$WORK/token
printf 'st_ci_not_a_real_token\n' >"$TOKEN"
install_stage() {
    systemd/install.sh --root "$STAGE" --no-venv --dock "$DOCK" --site WH1 \
        --ledger-url http://127.0.0.1:8080 --token-file "$TOKEN"
}
check "install.sh --root (staging install)" install_stage
n_failed=${#FAILED[@]}

expect_file() { # PATH [MODE]
    local path=$STAGE$1 mode
    if [ ! -e "$path" ] && [ ! -L "$path" ]; then
        fail "installer did not create $1"
        return
    fi
    if [ "$#" -ge 2 ]; then
        mode=$(stat -c %a -- "$path")
        [ "$mode" = "$2" ] || fail "$1 has mode $mode, expected $2"
    fi
}
expect_file /usr/local/lib/systemd/system/scan-agent@.service 644
expect_file /usr/local/lib/sysusers.d/scan-agent.conf 644
expect_file /usr/local/lib/tmpfiles.d/scan-agent.conf 644
expect_file /usr/local/lib/udev/rules.d/60-scan-agent.rules 644
expect_file /opt/scan-agent/share/dock.example.toml 644
expect_file "/etc/scan-agent/$DOCK.toml" 640
expect_file "/etc/scan-agent/$DOCK.token" 600
expect_file "/etc/systemd/system/multi-user.target.wants/$UNIT"
if [ "$IS_ROOT" = 1 ]; then
    expect_file /etc/scan-agent 750
    expect_file /var/lib/scan-agent/metrics 755
    grep -q '^scan-agent:' "$STAGE/etc/passwd" || fail "installer did not create the user"
    grep -Eq '^input:.*scan-agent' "$STAGE/etc/group" || fail "scan-agent is not in group input"
    grep -Eq '^dialout:.*scan-agent' "$STAGE/etc/group" ||
        fail "scan-agent is not in group dialout"
fi
cmp -s "$TOKEN" "$STAGE/etc/scan-agent/$DOCK.token" || fail "token file content differs"
[ "$(readlink "$STAGE/etc/systemd/system/multi-user.target.wants/$UNIT")" = \
    /usr/local/lib/systemd/system/scan-agent@.service ] || fail "enable symlink is wrong"
[ "${#FAILED[@]}" -ne "$n_failed" ] || ok "installer created the expected files"

# Idempotence: a second run changes nothing.
snapshot() {
    (cd -- "$STAGE" && find . -path ./etc/.pwd.lock -prune -o -print0 | sort -z |
        xargs -0 stat -c '%n %a %u %g %s' && find . -type f ! -name .pwd.lock -print0 |
        sort -z | xargs -0 sha256sum)
}
before=$(snapshot)
check "install.sh --root (second run)" install_stage
if [ "$before" = "$(snapshot)" ]; then
    ok "second install changed nothing"
else
    fail "second install changed the staging root"
    diff <(printf '%s\n' "$before") <(snapshot) | sed 's/^/    /' >&2 || true
fi

load_config() {
    "$PY" -c 'import sys; from agent.config import load_config; load_config(sys.argv[1])' "$1"
}
check "systemd/dock.example.toml loads" load_config systemd/dock.example.toml
check "generated $DOCK.toml loads" load_config "$STAGE/etc/scan-agent/$DOCK.toml"

# --- systemd-analyze verify and security, on the staged unit ----------------------------------
# verify resolves the unit's dependencies (sysinit.target, ...) and ExecStart= inside --root,
# so give the staging root the distribution's units and a stand-in for the venv's binary.
mkdir -p "$STAGE/usr/lib/systemd"
if [ -d /usr/lib/systemd/system ]; then
    cp -a /usr/lib/systemd/system "$STAGE/usr/lib/systemd/"
else
    fail "no /usr/lib/systemd/system here to verify against (apt-get install systemd)"
fi
mkdir -p "$STAGE/opt/scan-agent/venv/bin"
printf '#!/bin/sh\nexit 0\n' >"$STAGE/opt/scan-agent/venv/bin/scan-agent"
chmod 755 "$STAGE/opt/scan-agent/venv/bin/scan-agent"

# verify_unit ROOT UNIT: systemd-analyze verify (it exits 0 on many warnings, unknown keys and
# bad values among them, so any output fails) and the offline security score, on a staged unit.
verify_unit() {
    local root=$1 unit=$2 out
    if out=$(systemd-analyze verify --root="$root" --man=no "$unit" 2>&1) && [ -z "$out" ]; then
        ok "systemd-analyze verify $unit"
    else
        fail "systemd-analyze verify $unit"
        printf '%s\n' "$out" | sed 's/^/    /' >&2
    fi
    if out=$(systemd-analyze security --offline=yes --root="$root" --threshold="$THRESHOLD" \
        --no-pager "$unit" 2>&1); then
        ok "systemd-analyze security: $(printf '%s\n' "$out" | grep -o 'exposure level.*' |
            sed 's/^exposure level for //')"
    else
        fail "systemd-analyze security $unit: exposure above ${THRESHOLD%?}.${THRESHOLD#?}"
        printf '%s\n' "$out" | grep -v '✓' | sed 's/^/    /' >&2
    fi
}
verify_unit "$STAGE" "$UNIT"

# --- sysusers and tmpfiles --------------------------------------------------------------------
# Any message besides what a dry run reports (an unknown line type, a bad name) fails.
sysusers_dry_run() {
    local root=$WORK/sysusers-$1 out
    mkdir -p "$root/etc"
    out=$(systemd-sysusers --dry-run --root="$root" "$2" 2>&1) || {
        printf '%s\n' "$out"
        return 1
    }
    printf '%s\n' "$out"
    ! printf '%s\n' "$out" | grep -Ev '^(Creating (user|group) |Would write |Adding )' | grep -q .
}
check "systemd-sysusers --dry-run systemd/sysusers.d/scan-agent.conf" \
    sysusers_dry_run repo "$HERE/systemd/sysusers.d/scan-agent.conf"
gpio_variant=$WORK/sysusers-gpio.conf
{
    cat systemd/sysusers.d/scan-agent.conf
    printf 'm scan-agent gpio\n'
} >"$gpio_variant"
check "systemd-sysusers --dry-run (with the gpio line install.sh adds)" \
    sysusers_dry_run gpio "$gpio_variant"

tmpfiles_create() {
    local root=$WORK/tmpfiles out
    mkdir -p "$root/etc"
    systemd-sysusers --root="$root" "$HERE/systemd/sysusers.d/scan-agent.conf" >/dev/null 2>&1
    out=$(systemd-tmpfiles --create --root="$root" "$HERE/systemd/tmpfiles.d/scan-agent.conf" 2>&1)
    printf '%s\n' "$out"
    [ -z "$out" ] && [ -d "$root/etc/scan-agent" ] && [ -d "$root/var/lib/scan-agent/metrics" ]
}
if [ "$IS_ROOT" = 1 ]; then
    check "systemd-tmpfiles --create systemd/tmpfiles.d/scan-agent.conf" tmpfiles_create
else
    printf 'skipped: systemd-tmpfiles --create (needs root to chown)\n'
fi

# --- udev rules -------------------------------------------------------------------------------
udev_final_assignments() {
    # Permissions must be final (:=), or a later rule (Raspberry Pi OS's 99-com.rules) wins.
    [ -f systemd/udev/60-scan-agent.rules ] || return 1
    ! grep -Ev '^[[:space:]]*(#|$)' systemd/udev/60-scan-agent.rules |
        grep -E '(GROUP|MODE|OWNER)[[:space:]]*\+?=[^=]'
}
check "udev rules assign GROUP/MODE with :=" udev_final_assignments

# --- uninstall keeps configs, tokens and journals ---------------------------------------------
mkdir -p "$STAGE/var/lib/scan-agent/$DOCK"
printf 'journal\n' >"$STAGE/var/lib/scan-agent/$DOCK/journal.db"
check "install.sh --root --uninstall" systemd/install.sh --root "$STAGE" --uninstall
n_failed=${#FAILED[@]}
for gone in /usr/local/lib/systemd/system/scan-agent@.service \
    /usr/local/lib/sysusers.d/scan-agent.conf /usr/local/lib/tmpfiles.d/scan-agent.conf \
    /usr/local/lib/udev/rules.d/60-scan-agent.rules /opt/scan-agent \
    "/etc/systemd/system/multi-user.target.wants/$UNIT"; do
    if [ -e "$STAGE$gone" ] || [ -L "$STAGE$gone" ]; then
        fail "uninstall left $gone"
    fi
done
for kept in "/etc/scan-agent/$DOCK.toml" "/etc/scan-agent/$DOCK.token" \
    "/var/lib/scan-agent/$DOCK/journal.db"; do
    [ -e "$STAGE$kept" ] || fail "uninstall removed $kept"
done
[ "${#FAILED[@]}" -ne "$n_failed" ] ||
    ok "uninstall removed the software and kept configs, tokens and the journal"

# --- the ledger's unit (installed by hand, docs/ledger.md) ----------------------------------
LSTAGE=$WORK/ledger-stage
LUNIT=scan-ledger.service
mkdir -p "$LSTAGE/usr/lib/systemd" "$LSTAGE/usr/local/lib/systemd/system" \
    "$LSTAGE/etc/scan-ledger" "$LSTAGE/opt/scan-agent/venv/bin"
[ -d /usr/lib/systemd/system ] && cp -a /usr/lib/systemd/system "$LSTAGE/usr/lib/systemd/"
cp systemd/$LUNIT "$LSTAGE/usr/local/lib/systemd/system/"
cp systemd/ledger.example.toml "$LSTAGE/etc/scan-ledger/ledger.toml"
printf '#!/bin/sh\nexit 0\n' >"$LSTAGE/opt/scan-agent/venv/bin/scan-ledger"
chmod 755 "$LSTAGE/opt/scan-agent/venv/bin/scan-ledger"
verify_unit "$LSTAGE" "$LUNIT"
# the template for several processes on PostgreSQL, as one instance of it
cp systemd/scan-ledger@.service "$LSTAGE/usr/local/lib/systemd/system/"
cp systemd/ledger-postgresql.example.env "$LSTAGE/etc/scan-ledger/postgresql.env"
verify_unit "$LSTAGE" scan-ledger@8081.service
check "systemd-sysusers --dry-run systemd/sysusers.d/scan-ledger.conf" \
    sysusers_dry_run ledger "$HERE/systemd/sysusers.d/scan-ledger.conf"
load_ledger_config() {
    "$PY" -c 'import sys; from ledger.config import load_config; load_config(sys.argv[1])' "$1"
}
check "systemd/ledger.example.toml loads" load_ledger_config systemd/ledger.example.toml
# The example's commented-out keys are the real ones, with valid values.
sed -E 's/^# (([a-z_]+ = )|\[sites|allow_negative)/\1/' systemd/ledger.example.toml \
    >"$WORK/ledger-all-keys.toml"
check "systemd/ledger.example.toml with every key uncommented loads" \
    load_ledger_config "$WORK/ledger-all-keys.toml"

# --- shell scripts ----------------------------------------------------------------------------
if command -v shellcheck >/dev/null; then
    check "shellcheck" shellcheck systemd/install.sh .ci/systemd-check.sh
else
    printf 'skipped: shellcheck is not installed\n'
fi

if [ "${#FAILED[@]}" -gt 0 ]; then
    printf '\nsystemd checks failed (%d):\n' "${#FAILED[@]}" >&2
    printf '  - %s\n' "${FAILED[@]}" >&2
    exit 1
fi
printf '\nall systemd checks passed\n'
