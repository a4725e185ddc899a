#!/usr/bin/env bash
# Installs the Debian 12 packages alignprop needs to build and test, when they
# are missing. Idempotent: does nothing (and needs no root) when all are there.
set -euo pipefail
# libopenmpi-dev and openmpi-bin: data-parallel training (optional to build; CI tests it)
pkgs=(build-essential cmake pkg-config libdnnl-dev zlib1g-dev libcjson-dev libzip-dev libpng-dev libjpeg62-turbo-dev libopenmpi-dev openmpi-bin)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
