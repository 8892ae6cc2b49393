#!/usr/bin/env bash
# For a GPU machine with no package registry (the lent H100/H200 machines):
#   here:   scripts/device-deps.sh download   -> .device-deps/<package>.tar.xz
#   there:  scripts/device-deps.sh install    -> unpacks each one whose files are missing
# download fetches the Debian 12 .debs and keeps only what building and running
# lsgpt needs from each (headers, shared libraries and their symlinks, gtest's
# static libraries): no documentation and no other static library, so what
# travels to the device stays small (OpenBLAS's static library alone is 58 MB).
# Only packages absent from the machine are unpacked, so nothing it has is replaced.
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(nlohmann-json3-dev libcli11-dev libutf8proc-dev libutf8proc2 libgtest-dev
      libopenblas-openmp-dev libopenblas0-openmp libgfortran5 libquadmath0 zlib1g-dev
      libarchive-dev libarchive13
      libcpp-httplib-dev libcpp-httplib0.11 libssl-dev libbrotli-dev libbrotli1
      # OpenMPI for data-parallel training (mpirun) and what libmpi and its
      # launcher plugins load.
      openmpi-bin openmpi-common libopenmpi3 libopenmpi-dev libpmix2 libhwloc15
      libevent-core-2.1-7 libevent-pthreads-2.1-7 libltdl7 libnuma1 libmunge2 libucx0
      libfabric1 libibverbs1 librdmacm1 libnl-3-200 libnl-route-3-200 libpsm2-2
      libxnvctrl0 libpciaccess0)

# Files of a package that the device never uses.
slim() {  # $1 package, $2 its unpacked tree
  rm -rf "$2/usr/share/doc" "$2/usr/share/man" "$2/usr/share/lintian"
  if [[ "$1" != libgtest-dev ]]; then find "$2" -name '*.a' -delete; fi
  # LAPACK and the reference-BLAS alternative: lsgpt links libopenblas.so only.
  rm -f "$2"/usr/lib/*/openblas-openmp/liblapack.so* "$2"/usr/lib/*/openblas-openmp/libblas.so*
  # A development symlink names the exact library version (libz.so ->
  # /lib/.../libz.so.1.2.13); point it at the soname (libz.so.1) instead, which
  # the device's own runtime package provides whatever its version. Only
  # names with two or more components after the major one: libcpp-httplib.so
  # -> libcpp-httplib.so.0.11 is already the soname and stays.
  local link target
  while IFS= read -r link; do
    target=$(basename "$(readlink "$link")")
    if [[ "$target" =~ ^(lib.*\.so\.[0-9]+)\.[0-9]+\.[0-9]+$ ]]; then ln -sfn "${BASH_REMATCH[1]}" "$link"; fi
  done < <(find "$2" -type l -name '*.so')
  find "$2" -depth -type d -empty -delete
}

case "${1:-}" in
  download)
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && apt-get download "${pkgs[@]}")
    rm -rf .device-deps && mkdir -p .device-deps
    for deb in "$work"/*.deb; do
      pkg=$(dpkg-deb -f "$deb" Package)
      dpkg-deb -x "$deb" "$work/$pkg"
      slim "$pkg" "$work/$pkg"
      # Top-level entries (usr, ...), not ".", so unpacking never touches / itself.
      (cd "$work/$pkg" && tar --owner=0 --group=0 -cJf "$OLDPWD/.device-deps/$pkg.tar.xz" -- *)
    done
    du -cb .device-deps/* | tail -1 | awk '{printf "device-deps: %.1f MB in .device-deps\n", $1/1e6}' >&2
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
        libarchive-dev) [[ -f /usr/include/archive.h ]] ;;
        libarchive13) ldconfig -p | grep -q 'libarchive.so.13 ' ;;
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
    for tarball in .device-deps/*.tar.xz; do
      pkg=$(basename "$tarball" .tar.xz)
      if present "$pkg"; then continue; fi
      echo "device-deps: unpacking $pkg" >&2
      # --keep-directory-symlink: on a merged-/usr system (/lib -> usr/lib) a
      # directory in the tarball must not replace the symlink.
      tar -C / --no-same-owner --no-overwrite-dir --keep-directory-symlink -xJf "$tarball"
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
