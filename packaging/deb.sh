#!/usr/bin/env bash
# Build the Debian package and check it: the binary, the user unit, completions and man pages, and that the
# packaged binary runs. `PROFILE=release packaging/deb.sh` for a release package; CI uses the `dev` profile
# the tests already built (a release build costs ~9 minutes on 2 cores). cargo-deb is installed from
# crates.io into target/ci-tools (`cargo install --version 3.8.0 --locked`; CARGO_DEB_ROOT elsewhere), once,
# unless one is on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${PROFILE:-dev}
case "$profile" in
  dev) dir=debug ;;
  *) dir=$profile ;;
esac
tools=${CARGO_DEB_ROOT:-target/ci-tools}
if [ -x "$tools/bin/cargo-deb" ]; then
  cargo_deb=$tools/bin/cargo-deb
elif command -v cargo-deb >/dev/null 2>&1; then
  cargo_deb=$(command -v cargo-deb)
else
  cargo install cargo-deb --version 3.8.0 --locked --root "$tools"
  cargo_deb=$tools/bin/cargo-deb
fi

# CI passes DEB_REUSE_BIN=1: the tests just built this binary, and a plain `cargo build` would rebuild much of
# the workspace (dev-dependency features are not unified into it).
if [ -z "${DEB_REUSE_BIN:-}" ] || [ ! -x "target/$dir/omnigent" ]; then
  cargo build -p omnigent --profile "$profile"
fi
bin=target/$dir/omnigent
assets=target/$dir/deb-assets
rm -rf "$assets" && mkdir -p "$assets"
# Rendered by the binary from packaging/systemd/omnigent-host.service (the one template), with no home.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
OMNIGENT_HOME=$scratch HOME=$scratch "$bin" host enable --packaged --init systemd >"$assets/omnigent-host.service"
"$bin" completions bash >"$assets/omnigent.bash"
"$bin" completions zsh >"$assets/_omnigent"
"$bin" completions fish >"$assets/omnigent.fish"
"$bin" man "$assets/man"
gzip -9n "$assets"/man/*.1   # Debian policy: man pages compressed

rm -rf target/debian
fast=()
[ "$profile" = dev ] && fast=(--fast)   # a CI check, not a release: faster compression
"$cargo_deb" -p omnigent --no-build --profile "$profile" "${fast[@]}" --output target/debian/
deb=$(ls target/debian/*.deb)
echo "built $deb"

contents=$(dpkg-deb --contents "$deb")
missing=0
for f in ./usr/bin/omnigent \
         ./usr/lib/systemd/user/omnigent-host.service \
         ./usr/share/bash-completion/completions/omnigent \
         ./usr/share/zsh/vendor-completions/_omnigent \
         ./usr/share/fish/vendor_completions.d/omnigent.fish \
         ./usr/share/man/man1/omnigent.1.gz \
         ./usr/share/man/man1/omnigent-host-enable.1.gz; do
  if ! grep -q " $f\$" <<<"$contents"; then
    echo "deb check: $f is missing from $deb" >&2
    missing=1
  fi
done
if [ "$missing" -ne 0 ]; then
  echo "$contents" >&2
  exit 1
fi
dpkg-deb -x "$deb" "$scratch/root"
"$scratch/root/usr/bin/omnigent" --version
echo "deb check: ok ($(grep -c . <<<"$contents") entries)"
