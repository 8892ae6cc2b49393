#!/usr/bin/env bash
# Installs the Debian 12 packages lsgpt builds with, only those missing.
# Usage: scripts/install-deps.sh [--fuzz]   (--fuzz adds clang for libFuzzer)
set -euo pipefail

packages=(build-essential cmake ninja-build pkg-config libopenblas-openmp-dev nlohmann-json3-dev
          libcli11-dev libutf8proc-dev zlib1g-dev libgtest-dev gnuplot-nox
          libopenmpi-dev openmpi-bin)
if [[ "${1:-}" == "--fuzz" ]]; then
  packages+=(clang-14 libclang-rt-14-dev)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi

echo "lsgpt: installing missing Debian packages: ${missing[*]}" >&2
sudo=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "lsgpt: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
