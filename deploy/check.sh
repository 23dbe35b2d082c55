#!/usr/bin/env bash
# Checks a deployed keygate from the outside: a valid key is allowed, a
# request without a key or with an unknown key is denied with 401, and,
# when asked, that a key rotation has taken effect.
#
# Usage:
#   KEYGATE_KEY=... deploy/check.sh [URL]
#   deploy/check.sh URL KEY            (the key is then visible in `ps`)
#
# URL is the auth or proxy URL, KEYGATE_URL otherwise, default
# http://127.0.0.1:8080/. Optional environment:
#   KEYGATE_ADMIN_URL         admin base URL; checks that /readyz returns 200
#   KEYGATE_NEW_KEY           a key just added: wait until it is allowed
#   KEYGATE_OLD_KEY           a key just removed: wait until it is denied
#   KEYGATE_ROTATION_TIMEOUT  seconds to wait for a rotation, default 120,
#                             enough for the kubelet's sync period (about a
#                             minute) plus keygate's poll interval
#
# In proxy mode an allowed request gets the upstream's status, so "allowed"
# means any status other than 401 and 5xx. Exit status: 0 when every check
# passed, 1 when one failed, 2 for a usage error.
set -euo pipefail

url=${1:-${KEYGATE_URL:-http://127.0.0.1:8080/}}
key=${2:-${KEYGATE_KEY:-}}
rotation_timeout=${KEYGATE_ROTATION_TIMEOUT:-120}
failures=0

if [ -z "$key" ]; then
  echo "check.sh: missing key; set KEYGATE_KEY or pass the key after the URL" >&2
  exit 2
fi
if ! [[ $rotation_timeout =~ ^[0-9]+$ ]]; then
  echo "check.sh: invalid KEYGATE_ROTATION_TIMEOUT '$rotation_timeout'; expected whole seconds" >&2
  exit 2
fi

# Prints the HTTP status of a GET with the given bearer key (none if empty).
# The header goes to curl on standard input, so no key appears in its argv.
status_for() {
  local bearer=$1
  # curl's config syntax treats backslash and double quote as special.
  bearer=${bearer//\\/\\\\}
  bearer=${bearer//\"/\\\"}
  {
    if [ -n "$bearer" ]; then
      printf 'header = "Authorization: Bearer %s"\n' "$bearer"
    fi
  } | curl --silent --output /dev/null --max-time 10 \
      --write-out '%{http_code}' --config - "$url" || true
}

pass() { echo "ok:   $*"; }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

is_allowed() { [ "$1" != 401 ] && [ "$1" != 000 ] && [ "${1:0:1}" != 5 ]; }

check_allowed() {
  local what=$1 status
  status=$(status_for "$2")
  if is_allowed "$status"; then pass "$what allowed ($status)"; else fail "$what: expected allow, got $status"; fi
}

check_denied() {
  local what=$1 status
  status=$(status_for "$2")
  if [ "$status" = 401 ]; then pass "$what denied (401)"; else fail "$what: expected 401, got $status"; fi
}

# Waits until the key's status satisfies the predicate, for at most the rotation timeout.
wait_for() {
  local what=$1 bearer=$2 predicate=$3 deadline status
  deadline=$((SECONDS + rotation_timeout))
  while :; do
    status=$(status_for "$bearer")
    if "$predicate" "$status"; then
      pass "$what ($status)"
      return
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      fail "$what: still $status after ${rotation_timeout}s"
      return
    fi
    sleep 1
  done
}

is_denied() { [ "$1" = 401 ]; }

echo "checking $url"
if [ -n "${KEYGATE_ADMIN_URL:-}" ]; then
  ready=$(curl --silent --output /dev/null --max-time 10 --write-out '%{http_code}' \
    "${KEYGATE_ADMIN_URL%/}/readyz" || true)
  if [ "$ready" = 200 ]; then pass "/readyz (200)"; else fail "/readyz: expected 200, got $ready"; fi
fi

check_allowed "the given key" "$key"
check_denied "no key" ""
# Random and not in any key file, so it must be denied.
check_denied "an unknown key" "check-$(date +%s%N)-$RANDOM$RANDOM$RANDOM"

if [ -n "${KEYGATE_NEW_KEY:-}" ]; then
  wait_for "the new key is allowed" "$KEYGATE_NEW_KEY" is_allowed
fi
if [ -n "${KEYGATE_OLD_KEY:-}" ]; then
  wait_for "the old key is denied" "$KEYGATE_OLD_KEY" is_denied
fi

if [ "$failures" -gt 0 ]; then
  echo "$failures checks failed"
  exit 1
fi
echo "all checks passed"
