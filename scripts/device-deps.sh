#!/usr/bin/env bash
# For a GPU machine with no package registry (the lent H100/H200 machines):
#   here:   scripts/device-deps.sh download   -> Debian 12 .debs into .device-deps/
#   there:  scripts/device-deps.sh install    -> unpacks each one whose files are missing
# Only packages absent from the machine are unpacked, so nothing it has is replaced.
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(nlohmann-json3-dev libcli11-dev libutf8proc-dev libutf8proc2 libgtest-dev
      libopenblas-openmp-dev libopenblas0-openmp libgfortran5 libquadmath0 zlib1g-dev
      libcpp-httplib-dev libcpp-httplib0.11 libssl-dev libbrotli-dev libbrotli1)

case "${1:-}" in
  download)
    mkdir -p .device-deps
    (cd .device-deps && apt-get download "${pkgs[@]}")
    ;;
  install)
    present() {  # a file that shows the package's content is already there
      case "$1" in
        nlohmann-json3-dev) [[ -f /usr/include/nlohmann/json.hpp ]] ;;
        libcli11-dev) [[ -f /usr/include/CLI/CLI.hpp ]] ;;
        libutf8proc-dev) [[ -f /usr/include/utf8proc.h ]] ;;
        libutf8proc2) ldconfig -p | grep -q 'libutf8proc.so.2 ' ;;
        libgtest-dev) [[ -f /usr/include/gtest/gtest.h ]] ;;
        libopenblas-openmp-dev|libopenblas0-openmp)
          [[ -f /usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0 && "$1" == libopenblas0-openmp ]] ||
          [[ -e /usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so && "$1" == libopenblas-openmp-dev ]] ;;
        libgfortran5) ldconfig -p | grep -q 'libgfortran.so.5 ' ;;
        libquadmath0) ldconfig -p | grep -q 'libquadmath.so.0 ' ;;
        zlib1g-dev) [[ -f /usr/include/zlib.h ]] ;;
        libcpp-httplib-dev) [[ -f /usr/include/httplib.h ]] ;;
        libcpp-httplib0.11) ldconfig -p | grep -q 'libcpp-httplib.so.0.11 ' ;;
        libssl-dev) [[ -f /usr/include/openssl/ssl.h ]] ;;       # httplib.h includes it
        libbrotli-dev) [[ -f /usr/include/brotli/decode.h ]] ;;  # and this
        libbrotli1) ldconfig -p | grep -q 'libbrotlidec.so.1 ' ;;  # libcpp-httplib.so links it
        *) return 1 ;;
      esac
    }
    for deb in .device-deps/*.deb; do
      pkg=$(dpkg-deb -f "$deb" Package)
      if present "$pkg"; then continue; fi
      echo "device-deps: unpacking $pkg" >&2
      dpkg -x "$deb" /
    done
    ldconfig
    ;;
  *)
    echo "usage: scripts/device-deps.sh download|install" >&2
    exit 2
    ;;
esac
