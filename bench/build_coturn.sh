#!/bin/sh
# Build upstream coturn's turnserver (4.17.x: recvmmsg on by default,
# which Debian's 4.6.1 lacks) into bench/build/coturn, for
# `python bench/relay.py --turnserver bench/build/coturn/bin/turnserver`.
#
# usage: sh bench/build_coturn.sh GIT_DIR [REV]
#   GIT_DIR: a clone of https://github.com/coturn/coturn (bare or not);
#   REV: what to build (default HEAD).
# Needs cmake, a C compiler, libevent-dev, libssl-dev and libmicrohttpd-dev;
# libsqlite3-dev and libhiredis-dev for bench/auth.py's user databases.
set -eu
git_dir=${1:?usage: build_coturn.sh GIT_DIR [REV]}
rev=${2:-HEAD}
here=$(cd "$(dirname "$0")" && pwd)
source="$here/build/coturn-src"
out="$here/build/coturn"
rm -rf "$source" && mkdir -p "$source" "$out/bin"
git --git-dir="$git_dir" archive "$rev" | tar -x -C "$source"
cmake -S "$source" -B "$source/build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$source/build" --target turnserver -j "$(nproc)" >/dev/null
cp "$(find "$source/build" -name turnserver -type f -perm -u+x | head -1)" "$out/bin/turnserver"
"$out/bin/turnserver" --version 2>/dev/null || true
echo "built $out/bin/turnserver"
