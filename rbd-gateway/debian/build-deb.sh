#!/usr/bin/env bash
# Builds the rbd-row Debian package (rbd-row, rbd-gateway, man pages, the
# rbd-gateway@.service unit and, when the crate exists, the librbd.so.1
# drop-in under /usr/lib/rbd-row/) with cargo-deb.
#
#   rbd-gateway/debian/build-deb.sh                 # release build (the real package)
#   rbd-gateway/debian/build-deb.sh --profile dev   # package the debug binaries
#                                                   # already built (tests; stripped)
#   OUT=/some/dir rbd-gateway/debian/build-deb.sh   # where the .deb goes
#                                                   # (default target/debian)
#   RBD_ROW_DEB_LIBRBD=no ...                       # leave the librbd drop-in out
#                                                   # (default: in when its crate exists)
#
# Needs cargo-deb (`cargo install cargo-deb --locked`), help2man and
# dpkg-dev (dpkg-shlibdeps fills in the shared-library dependencies).
# Prints the path of the .deb on its last line.
set -euo pipefail
cd "$(dirname "$0")/../.."

profile=release
while (($#)); do
    case $1 in
        --profile) profile=${2:?--profile needs a value}; shift 2 ;;
        --profile=*) profile=${1#--profile=}; shift ;;
        *) echo "build-deb.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
for tool in cargo-deb help2man dpkg-shlibdeps; do
    command -v "$tool" >/dev/null || {
        echo "build-deb.sh: $tool not found (cargo install cargo-deb --locked; apt-get install help2man dpkg-dev)" >&2
        exit 1
    }
done

target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
case $profile in dev|debug) bin_dir=$target_dir/debug ;; *) bin_dir=$target_dir/$profile ;; esac

# The librbd drop-in is packaged when its crate is in the workspace.
variant=()
cargo build --profile "$profile" -p rbd-gateway -p rbd-row-cli
librbd=${RBD_ROW_DEB_LIBRBD:-auto}
[ "$librbd" != auto ] || { [ -f rbd-gateway/librbd/Cargo.toml ] && librbd=yes || librbd=no; }
if [ "$librbd" = yes ]; then
    cargo build --profile "$profile" --manifest-path rbd-gateway/librbd/Cargo.toml
    variant=(--variant with-librbd)
    # cargo-deb strips only what it recognises as a library by its
    # installed name (*.so), so the drop-in is stripped here.
    mkdir -p "$bin_dir/deb-staging"
    objcopy --strip-debug "$bin_dir/librbd.so" "$bin_dir/deb-staging/librbd.so.1"
fi

# Man pages from --help (help2man), into the target dir.
man_dir=$bin_dir/man
mkdir -p "$man_dir"
help2man --no-info --section 1 \
    --name "serve rbd-row images (Ceph RBD with redirect-on-write snapshots) over NBD" \
    "$bin_dir/rbd-gateway" | gzip -9n >"$man_dir/rbd-gateway.1.gz"
help2man --no-info --section 1 \
    --name "rbd-compatible command-line tool for rbd-row images" \
    "$bin_dir/rbd-row" | gzip -9n >"$man_dir/rbd-row.1.gz"

out=${OUT:-$target_dir/debian}
mkdir -p "$out"
log=$(mktemp)
trap 'rm -f "$log" "$log.out"' EXIT
# --strip: the release profile keeps debug info (debug = 1) for profiling,
# which cargo-deb would otherwise package (83 MiB rbd-gateway).
if ! cargo deb -p rbd-gateway --no-build --strip --profile "$profile" "${variant[@]}" --output "$out" >"$log.out" 2>"$log"; then
    cat "$log" "$log.out" >&2
    exit 1
fi
grep -v 'dev profile is not supported\|cargo-deb is for making releases\|To enable debug symbols\|Cargo also supports custom profiles' "$log" >&2 || true
# cargo deb prints the package's path last.
deb=$(tail -n1 "$log.out")
[ -f "$deb" ] || { echo "build-deb.sh: cargo deb made no package ($deb)" >&2; exit 1; }
echo "$deb"
