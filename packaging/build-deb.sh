#!/usr/bin/env bash
# Build the securely Debian package: release binaries, man pages and shell completions,
# then cargo-deb (--no-build). Prints the .deb's path on the last line of stdout.
#
# Usage: packaging/build-deb.sh [extra cargo-deb arguments...]
# Env:   DEB_VERSION   the package version, e.g. 0.1.0-2 or 0.1.0+git20250101-1 (default:
#                      the workspace version, revision 1). An upgrade needs a higher one.
#        DEB_OUTPUT    where the .deb goes (default: <target dir>/debian/)
#        DBGSYM=1      keep the debug info in a separate securely-dbgsym .ddeb instead of
#                      stripping it (the release profile has line tables)
# Needs: cargo, cargo-deb (cargo install cargo-deb --locked), gzip, dpkg-dev
#        (dpkg-shlibdeps, for the $auto dependencies).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v cargo-deb >/dev/null || {
    echo "build-deb: cargo-deb is missing: cargo install cargo-deb --locked" >&2
    exit 1
}

# One build of the whole workspace, as `cargo build --workspace --release` does anywhere
# else: selecting packages with -p would resolve other features and rebuild the tree (and
# an up-to-date release tree makes this a no-op). cargo-deb below runs with --no-build.
echo "build-deb: building the release binaries" >&2
cargo build --workspace --release --locked >&2

target_dir=$(cargo metadata --format-version 1 --no-deps --locked |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
release=$target_dir/release
# cargo-deb resolves asset paths "target/release/..." to this directory.
extra=$release/deb
rm -rf "$extra"
mkdir -p "$extra/man" "$extra/completions"

echo "build-deb: generating man pages and completions" >&2
"$release/securelyctl" man "$extra/man" >/dev/null
for page in "$extra"/man/*.1; do
    gzip -9n "$page"
done
"$release/securelyctl" completions bash >"$extra/completions/securelyctl.bash"
"$release/securelyctl" completions zsh >"$extra/completions/_securelyctl"
"$release/securelyctl" completions fish >"$extra/completions/securelyctl.fish"
expected="securely securelyctl securely-proxyd securely-dnsd securely-queued"
for name in $expected; do
    [[ -s $extra/man/$name.1.gz ]] || {
        echo "build-deb: securelyctl man wrote no $name.1" >&2
        exit 1
    }
done

args=(-p securely --no-build --output "${DEB_OUTPUT:-$target_dir/debian/}")
if [[ ${DBGSYM:-0} == 1 ]]; then
    args+=(--dbgsym)
else
    args+=(--strip)
fi
if [[ -n ${DEB_VERSION:-} ]]; then
    args+=(--deb-version "$DEB_VERSION")
fi

echo "build-deb: cargo deb ${args[*]} $*" >&2
deb=$(cargo deb "${args[@]}" "$@" | tail -n 1)
[[ -f $deb ]] || {
    echo "build-deb: cargo deb did not report a package (got: $deb)" >&2
    exit 1
}
echo "$deb"
