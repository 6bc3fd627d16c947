#!/usr/bin/env bash
# Installs lockext's build and test dependencies from Debian 12's packages.
# Idempotent and quick when everything is present. Run as root (or via sudo).
set -euo pipefail

packages=(
	build-essential g++ make cmake pkg-config
	postgresql-15 postgresql-server-dev-15 libpq-dev libkrb5-dev
	libipc-run-perl libgtest-dev pgbouncer faketime valgrind
)

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
	echo "lockext: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >/dev/null
	apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's postgresql-common starts a "main" cluster on package install; lockext's
# scripts use throwaway clusters of their own and never touch it.
