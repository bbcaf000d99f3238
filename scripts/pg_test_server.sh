#!/usr/bin/env bash
# Start/stop a throwaway PostgreSQL on a loopback port for the tests.
#   scripts/pg_test_server.sh start DIR PORT   -> prints the URL on stdout
#   scripts/pg_test_server.sh stop DIR
# Installs Debian's postgresql when missing and we are root; otherwise says what is missing.
set -euo pipefail
cmd=${1:?start|stop}; dir=${2:?data dir}; port=${3:-55432}

pgbin() {
  local b
  for b in /usr/lib/postgresql/*/bin; do [ -x "$b/pg_ctl" ] && { echo "$b"; return 0; }; done
  return 1
}

if [ "$cmd" = stop ]; then
  bin=$(pgbin) || exit 0
  if [ -f "$dir/postmaster.pid" ]; then
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$bin/pg_ctl" -D "$dir" -m fast -w stop >/dev/null || true
    else "$bin/pg_ctl" -D "$dir" -m fast -w stop >/dev/null || true; fi
  fi
  rm -rf "$dir"
  exit 0
fi

if ! bin=$(pgbin); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's postgresql ..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
    bin=$(pgbin)
  else
    echo "PostgreSQL is not installed and this user cannot install it (needs root + apt-get)." >&2
    echo "Install it ('apt-get install postgresql') or set TEST_DATABASE_URL to a server you own." >&2
    exit 3
  fi
fi

rm -rf "$dir"; mkdir -p "$dir"
run() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; chmod 700 "$dir"; fi
run "$bin/initdb" -D "$dir" --auth=trust -E UTF8 -U postgres >"$dir.initdb.log" 2>&1 || { cat "$dir.initdb.log" >&2; exit 4; }
run "$bin/pg_ctl" -D "$dir" -w -l "$dir/server.log" \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
  start >/dev/null || { cat "$dir/server.log" >&2; exit 5; }
echo "postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
