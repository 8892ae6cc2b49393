#!/usr/bin/env bash
# For a GPU machine with no package registry (the lent H100/H200 machines):
#   here:   scripts/device-deps.sh download   -> Debian 12 .debs into .device-deps/
#   there:  scripts/device-deps.sh install    -> unpacks each one whose files are missing
# Only packages absent from the machine are unpacked, so nothing it has is replaced.
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(nlohmann-json3-dev libcli11-dev libutf8proc-dev libutf8proc2 libgtest-dev
      libopenblas-openmp-dev libopenblas0-openmp libgfortran5 libquadmath0 zlib1g-dev
      # OpenMPI for data-parallel training (mpirun) and what libmpi and its
      # launcher plugins load.
      openmpi-bin openmpi-common libopenmpi3 libopenmpi-dev libpmix2 libhwloc15
      libevent-core-2.1-7 libevent-pthreads-2.1-7 libltdl7 libnuma1 libmunge2 libucx0
      libfabric1 libibverbs1 librdmacm1 libnl-3-200 libnl-route-3-200 libpsm2-2
      libxnvctrl0 libpciaccess0)

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
        openmpi-bin) [[ -x /usr/bin/mpirun.openmpi ]] ;;
        openmpi-common) [[ -d /usr/share/openmpi ]] ;;
        libopenmpi3) ldconfig -p | grep -q 'libmpi.so.40 ' ;;
        libopenmpi-dev) [[ -f /usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h ]] ;;
        libpmix2) ldconfig -p | grep -q 'libpmix.so.2 ' ;;
        libhwloc15) ldconfig -p | grep -q 'libhwloc.so.15 ' ;;
        libevent-core-2.1-7) ldconfig -p | grep -q 'libevent_core-2.1.so.7 ' ;;
        libevent-pthreads-2.1-7) ldconfig -p | grep -q 'libevent_pthreads-2.1.so.7 ' ;;
        libltdl7) ldconfig -p | grep -q 'libltdl.so.7 ' ;;
        libnuma1) ldconfig -p | grep -q 'libnuma.so.1 ' ;;
        libmunge2) ldconfig -p | grep -q 'libmunge.so.2 ' ;;
        libucx0) ldconfig -p | grep -q 'libucp.so.0 ' ;;
        libfabric1) ldconfig -p | grep -q 'libfabric.so.1 ' ;;
        libibverbs1) ldconfig -p | grep -q 'libibverbs.so.1 ' ;;
        librdmacm1) ldconfig -p | grep -q 'librdmacm.so.1 ' ;;
        libnl-3-200) ldconfig -p | grep -q 'libnl-3.so.200 ' ;;
        libnl-route-3-200) ldconfig -p | grep -q 'libnl-route-3.so.200 ' ;;
        libpsm2-2) ldconfig -p | grep -q 'libpsm2.so.2 ' ;;
        libxnvctrl0) ldconfig -p | grep -q 'libXNVCtrl.so.0 ' ;;
        libpciaccess0) ldconfig -p | grep -q 'libpciaccess.so.0 ' ;;
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
    # dpkg -x runs no maintainer scripts: make the links update-alternatives
    # would (mpirun, and the compiler wrappers CMake's FindMPI asks).
    for tool in mpirun mpiexec mpicc mpicxx; do
      if [[ -x /usr/bin/$tool.openmpi && ! -e /usr/bin/$tool ]]; then
        ln -s "$tool.openmpi" "/usr/bin/$tool"
      fi
    done
    ;;
  *)
    echo "usage: scripts/device-deps.sh download|install" >&2
    exit 2
    ;;
esac
