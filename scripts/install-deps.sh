#!/usr/bin/env bash
# Installs the Debian 12 packages lsgpt builds with, only those missing.
# Usage: scripts/install-deps.sh [--fuzz] [--tests]
#   --fuzz adds clang for libFuzzer; --tests adds what only the tests use
#   (chromium, to open `lsgpt report` pages headless).
set -euo pipefail

packages=(build-essential cmake ninja-build pkg-config libopenblas-openmp-dev nlohmann-json3-dev
          libcli11-dev libutf8proc-dev zlib1g-dev libarchive-dev libgtest-dev gnuplot-nox
          libcpp-httplib-dev libopenmpi-dev openmpi-bin)
for arg in "$@"; do
  case "$arg" in
    --fuzz) packages+=(clang-14 libclang-rt-14-dev) ;;
    --tests) packages+=(chromium) ;;
    *) echo "usage: scripts/install-deps.sh [--fuzz] [--tests]" >&2; exit 2 ;;
  esac
done

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
