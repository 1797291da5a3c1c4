# Shared helpers of the offline image builders: copy host binaries and every
# library `ldd` lists into an empty root, then `docker import` it. No registry
# and no package host is contacted.
set -euo pipefail

# rootfs_add_binary ROOT SRC [DEST_NAME]: copies SRC (symlinks resolved) to
# ROOT/usr/local/bin/DEST_NAME with its shared libraries and loader.
rootfs_add_binary() {
  local root=$1 src=$2 name=${3:-$(basename "$2")}
  local real
  real=$(readlink -f "$src")
  install -D -m 0755 "$real" "$root/usr/local/bin/$name"
  ldd "$real" | awk '/=>/ {print $3} /^[ \t]*\/.*ld-linux/ {print $1}' | while read -r lib; do
    [ -n "$lib" ] && [ -e "$lib" ] || continue
    local dest="$root$lib"
    mkdir -p "$(dirname "$dest")"
    cp -L "$lib" "$dest"
    chmod 0755 "$dest"
  done
}

# rootfs_base ROOT: the few files most programs expect.
rootfs_base() {
  local root=$1
  mkdir -p "$root"/{etc,tmp,data,var/run}
  chmod 1777 "$root/tmp"
  echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
  echo 'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin' >> "$root/etc/passwd"
  echo 'root:x:0:' > "$root/etc/group"
  echo 'nogroup:x:65534:' >> "$root/etc/group"
  echo 'hosts: files dns' > "$root/etc/nsswitch.conf"
  # glibc resolves names through these NSS modules (for container DNS).
  for lib in /lib/x86_64-linux-gnu/libnss_files.so.2 /lib/x86_64-linux-gnu/libnss_dns.so.2 \
             /lib/x86_64-linux-gnu/libresolv.so.2; do
    if [ -e "$lib" ]; then
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    fi
  done
}

# image_import ROOT TAG CHANGE...: imports ROOT as TAG with the given
# Dockerfile-style changes, labelled with a content hash so an unchanged
# root is not imported again.
image_import() {
  local root=$1 tag=$2; shift 2
  local hash
  hash=$( (cd "$root" && find . -type f -print0 | sort -z | xargs -0 sha256sum; printf '%s\n' "$@") | sha256sum | cut -c1-16)
  if [ "$(docker image inspect -f '{{ index .Config.Labels "sluice.hash" }}' "$tag" 2>/dev/null || true)" = "$hash" ]; then
    echo "image $tag is up to date ($hash)"
    return 0
  fi
  local args=(-c "LABEL sluice.hash=$hash")
  local c
  for c in "$@"; do args+=(-c "$c"); done
  tar -C "$root" -c . | docker import "${args[@]}" - "$tag" >/dev/null
  echo "built image $tag ($hash)"
}

# ensure_pkg CMD PKG: installs the Debian package PKG when CMD is missing.
ensure_pkg() {
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing $1: install the Debian package $2" >&2
    return 1
  fi
  echo "installing $2 (for $1)"
  # Another apt run (a parallel setup) may hold the dpkg lock: wait for it.
  apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq "$2" >/dev/null
}

# PATH set in every image (docker import sets none).
IMAGE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# The workspace root and cargo's target directory.
SLUICE_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SLUICE_TARGET_DIR=${CARGO_TARGET_DIR:-$SLUICE_REPO/target}
case "$SLUICE_TARGET_DIR" in /*) ;; *) SLUICE_TARGET_DIR=$SLUICE_REPO/$SLUICE_TARGET_DIR ;; esac

# release_binaries: builds sluice-edge and sluice (release) on the host.
# Always the same package set, so cargo's feature resolution, and with it
# the build, stays the same whichever script asks (a no-op takes ~1 s).
# SLUICE_SKIP_CARGO=1 uses the binaries already in the target directory.
release_binaries() {
  if [ "${SLUICE_SKIP_CARGO:-0}" = 1 ]; then
    echo "SLUICE_SKIP_CARGO=1: using the binaries in $SLUICE_TARGET_DIR/release"
  else
    (cd "$SLUICE_REPO" && cargo build --release -p sluice-edge -p sluice-broker)
  fi
  local b
  for b in sluice-edge sluice; do
    if [ ! -x "$SLUICE_TARGET_DIR/release/$b" ]; then
      echo "missing $SLUICE_TARGET_DIR/release/$b: run cargo build --release -p sluice-edge -p sluice-broker" >&2
      return 1
    fi
  done
}

# rootfs_strip FILE: drops debug info (the release profile keeps line tables
# for backtraces on the host; the image does not need them).
rootfs_strip() {
  if command -v strip >/dev/null 2>&1; then
    strip --strip-debug "$1"
  fi
}
