#!/usr/bin/env bash
# Prints the Debian packages that provide the shared libraries the given
# binaries load, one per line, sorted. The image build runs it in the builder
# stage so the runtime stage installs exactly what stratad and strata-cli
# link against (gRPC, protobuf, abseil, prometheus-cpp, PCRE2, ...), whatever
# the CMake files add later.
# Usage: docker/runtime-packages.sh build/bin/stratad build/bin/strata-cli
set -euo pipefail
if (($# == 0)); then
  echo "usage: $0 BINARY..." >&2
  exit 2
fi

libs=$(ldd "$@" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u)
for lib in ${libs}; do
  # Debian 12 is usr-merged: ldd may say /lib/... where dpkg recorded
  # /usr/lib/... (or the other way round), and the path may be a symlink to
  # the versioned file. Try the path, its other spelling, then the target.
  pkg=""
  for candidate in "${lib}" "/usr${lib}" "${lib#/usr}" "$(readlink -f "${lib}")"; do
    if pkg=$(dpkg-query -S "${candidate}" 2>/dev/null | head -n 1); then
      break
    fi
    pkg=""
  done
  if [[ -z "${pkg}" ]]; then
    echo "runtime-packages: no package owns ${lib}" >&2
    exit 1
  fi
  # "libfoo1:amd64: /usr/lib/..." -> "libfoo1"; a file shared by several
  # packages reads "liba:amd64, libb:amd64: /path".
  echo "${pkg%%: /*}" | tr ',' '\n' | sed -e 's/^ *//' -e 's/:.*//'

done | sort -u
