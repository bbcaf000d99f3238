#!/usr/bin/env bash
# Debian packages the tests need: PostgreSQL (server), Chromium (browser tests) and a C++ compiler
# (torch.compile's inductor backend builds its CPU kernels with it).
# Installs what is missing when run as root with apt-get; otherwise says clearly what is missing.
set -u
need=()
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v g++ >/dev/null 2>&1 || need+=(g++)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || { echo "apt-get install ${need[*]} failed" >&2; exit 1; }
else
  echo "WARNING: missing Debian packages: ${need[*]} (need root + apt-get to install them)." >&2
  echo "  Give TEST_DATABASE_URL (a PostgreSQL you own) and install Chromium at /usr/bin/chromium; the tests need both." >&2
fi
