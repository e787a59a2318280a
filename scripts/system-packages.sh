#!/usr/bin/env bash
# The Debian packages the test suite drives as real processes: PostgreSQL (trace store), Redis (shared rate
# limits), Chromium and ChromeDriver (the /ui pages in a real headless browser). Installs what is missing when it
# can (root and apt-get); otherwise says what is missing and leaves it to the tests, which skip locally and fail
# in CI (CI=1). Never downloads a browser build: Debian's chromium only.
set -euo pipefail
need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # The package starts its own cluster and server; the tests start their own on free ports.
  (service postgresql stop || true; service redis-server stop || true) >/dev/null 2>&1
else
  echo "missing Debian packages (tests that need them skip; in CI they fail): ${need[*]}" >&2
fi
