#!/bin/sh
# Prepare compose/dev.yml; run once on this host, before the first 'up':
#
#   sh compose/dev-init.sh
#
# 1. If you have no signing key yet, create one for your shoal CLI
#    ('shoal keys new', in ~/.config/shoal/keys).
# 2. Write compose/dev-secrets/trust.toml, which trusts your default key as admin
#    ('shoal enroll HOST --out compose/dev-secrets'; it also writes an agent NATS
#    seed and user entry, which dev.yml does not need: its NATS has no users).
#
# Run it again to trust your current default key; then restart the agent:
#   docker compose -f compose/dev.yml restart agent
# Set SHOAL to another shoal command (SHOAL=.venv/bin/shoal), SHOAL_HOST_ID for
# another host id in the enrollment, KEY_NAME for the name of a new key.
set -eu

shoal=${SHOAL:-shoal}
here=$(cd "$(dirname "$0")" && pwd)
out="$here/dev-secrets"

if ! command -v "$shoal" >/dev/null 2>&1; then
    echo "dev-init: '$shoal' not found; install Shoal (README.md) or set SHOAL=/path/to/shoal" >&2
    exit 1
fi
if [ -d "$out" ] && [ ! -w "$out" ]; then
    echo "dev-init: $out is not writable (did 'up' create it as root?); remove it first" >&2
    exit 1
fi

if ! "$shoal" keys list --json | grep -q '"default": true'; then
    name=${KEY_NAME:-$(id -un 2>/dev/null | tr -c 'A-Za-z0-9_.\n-' '-')}
    case $name in [A-Za-z0-9]*) ;; *) name=dev ;; esac
    "$shoal" keys new "$name" >/dev/null
fi
"$shoal" enroll "${SHOAL_HOST_ID:-dev}" --out "$out"
echo "dev-init: ready; now: docker compose -f compose/dev.yml up -d --build && shoal ps"
