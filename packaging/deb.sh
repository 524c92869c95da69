#!/usr/bin/env bash
# Builds dist/tandem_VERSION_amd64.deb with dpkg-deb from the compiled binary (packaging/build.sh):
#   /usr/bin/tandem                     the binary (Bun runtime included: no Bun or Node needed)
#   /lib/systemd/system/tandem.service  the unit (not enabled: `tandem install` enables it)
#   /etc/tandem/node.toml               the default config, a conffile (an edited one survives upgrades)
#   /usr/share/man/man1/tandem.1.gz, /usr/share/doc/tandem/{copyright,changelog.gz}
# Depends: only the C library the binary links (ldd: libc, libm, libpthread, libdl, all in libc6).
# Recommends: qemu-utils and libnbd-bin, used by `tandem volume copy-out`, not by the daemon;
# libssl3 (libssl3t64 from Debian 13), whose libcrypto the daemon loads for cheaper replication
# frame tags (without it the tags are node:crypto's, the same bytes at more CPU per frame).
# The binary is not stripped: Bun keeps the program's code in the executable, and strip would
# remove it (hence the lintian override). gzip by default (xz takes minutes on 108 MB;
# DEB_COMPRESSION=xz for a smaller file). Runs lintian when it is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x dist/tandem ] && [ -z "${REBUILD:-}" ] || ./packaging/build.sh
version=$(sed -n 's/^export const tandemVersion = "\(.*\)";$/\1/p' src/common/version.ts)
[ -n "$version" ] || { echo "deb.sh: cannot read the version from src/common/version.ts" >&2; exit 1; }
[ "$(./dist/tandem --version)" = "$version" ] || { echo "deb.sh: dist/tandem is not version $version; REBUILD=1 $0" >&2; exit 1; }
arch=amd64
root=$(mktemp -d "${TMPDIR:-/tmp}/tandem-deb.XXXXXX")
trap 'rm -rf "$root"' EXIT
umask 022

install -D -m 0755 dist/tandem "$root/usr/bin/tandem"
install -D -m 0644 packaging/tandem.service "$root/lib/systemd/system/tandem.service"
install -D -m 0644 packaging/node.toml "$root/etc/tandem/node.toml"
install -d -m 0755 "$root/usr/share/man/man1" "$root/usr/share/doc/tandem" "$root/usr/share/lintian/overrides"
gzip -9n <packaging/tandem.1 >"$root/usr/share/man/man1/tandem.1.gz"
cat >"$root/usr/share/doc/tandem/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: tandem

Files: *
Copyright: 2025-2026 the Tandem authors
License: proprietary
 All rights reserved.
COPYRIGHT
date_rfc2822=$(date -R -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")
cat <<CHANGELOG | gzip -9n >"$root/usr/share/doc/tandem/changelog.gz"
tandem ($version) unstable; urgency=medium

  * Release $version: see the project's README.md and docs/.

 -- Tandem maintainers <maintainers@tandem.example>  $date_rfc2822
CHANGELOG
cat >"$root/usr/share/lintian/overrides/tandem" <<'OVERRIDES'
# Bun's compiled executables carry the program's code inside the file; stripping would destroy it.
tandem: unstripped-binary-or-object [usr/bin/tandem]
# Bun's runtime links its own image decoders (for Bun.Image); the daemon never decodes images.
tandem: embedded-library libjpeg [usr/bin/tandem]
# Bun's runtime is linked without PIE and RELRO; the build cannot change how Bun itself is linked.
tandem: hardening-no-pie [usr/bin/tandem]
tandem: hardening-no-relro [usr/bin/tandem]
OVERRIDES
chmod 0644 "$root/usr/share/lintian/overrides/tandem"

install -d -m 0755 "$root/DEBIAN"
echo /etc/tandem/node.toml >"$root/DEBIAN/conffiles"
installed_kib=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<CONTROL
Package: tandem
Version: $version
Architecture: $arch
Maintainer: Tandem maintainers <maintainers@tandem.example>
Installed-Size: $installed_kib
Depends: libc6 (>= 2.17)
Recommends: qemu-utils, libnbd-bin, libssl3 | libssl3t64
Section: admin
Priority: optional
Homepage: https://tandem.example/
Description: two-node mirrored block storage for edge boxes
 Tandem mirrors every volume synchronously between the two nodes of a
 two-node box and serves volumes to local virtual machines over NBD and
 vhost-user-blk. One self-contained program is both the node daemon (run by
 the tandem systemd unit) and the command line that drives it.
CONTROL

mkdir -p dist
out="dist/tandem_${version}_${arch}.deb"
dpkg-deb --root-owner-group "-Z${DEB_COMPRESSION:-gzip}" --build "$root" "$out" >/dev/null
echo "built $out ($(du -h "$out" | cut -f1))"
if command -v lintian >/dev/null; then
  lintian --fail-on error,warning "$out"
  echo "lintian: clean"
fi
