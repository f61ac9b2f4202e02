#!/usr/bin/env bash
# Provisions the emulated KVM hosts (docs/emulated-hosts.md): QEMU and tools from Debian, the
# pinned Debian kernels and busybox for amd64 and arm64, and an initramfs for each host; and the
# guest side (docs/guest.md): the pinned cloud kernels unpacked for MicroVMs (guest-<arch>/) and
# msgpack-c for the guest agent (msgpack-<debarch>/); all in $VMMD_CACHE/hosts/v<HOSTS_VERSION>.
# Idempotent: a cached re-run only checks stamps.
# Prints the host directory.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/pins.env"
cache=${VMMD_CACHE:-$HOME/.cache/vmmd}
out=$cache/hosts/v$HOSTS_VERSION
mkdir -p "$out/debs"
log() { printf 'hosts: %s\n' "$*" >&2; }
t0=$(date +%s)

# --- tools from Debian ---
tools=(qemu-system-x86 qemu-system-arm kmod cpio gcc-aarch64-linux-gnu
       libc6-dev-arm64-cross e2fsprogs zstd lz4)
missing=()
for p in "${tools[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
need_update=0
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    log "adding the arm64 architecture to apt"
    dpkg --add-architecture arm64
    need_update=1
fi
if [ ${#missing[@]} -gt 0 ] || [ $need_update = 1 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi

# --- pinned packages, downloaded once ---
# A pinned version can leave the mirror after a point release; the same package name then keeps
# the kernel ABI, so we take what the mirror has and say so.
fetch() {  # fetch NAME[:ARCH] VERSION
    local name=$1 ver=$2 base=${1%%:*} arch=${1#*:}
    [ "$arch" = "$name" ] && arch=amd64
    if ls "$out/debs/${base}_"*"_$arch.deb" >/dev/null 2>&1; then return; fi
    log "downloading $name=$ver"
    if ! (cd "$out/debs" && apt-get download -q "$name=$ver" >/dev/null 2>&1); then
        log "WARNING: $name=$ver is gone from the mirror; taking the version it has"
        (cd "$out/debs" && apt-get download -q "$name" >/dev/null 2>&1) || {
            log "cannot download $name (apt-get update, or check hosts/pins.env)"; exit 1; }
    fi
}
fetch "linux-image-$KERNEL_ABI-amd64" "$KERNEL_VERSION"
fetch "linux-image-$KERNEL_ABI-arm64:arm64" "$KERNEL_VERSION"
fetch "busybox-static:amd64" "$BUSYBOX_VERSION"
fetch "busybox-static:arm64" "$BUSYBOX_VERSION"
fetch "linux-image-$KERNEL_ABI-cloud-amd64" "$KERNEL_VERSION"
fetch "linux-image-$KERNEL_ABI-cloud-arm64:arm64" "$KERNEL_VERSION"
fetch "libmsgpack-dev:amd64" "$MSGPACK_VERSION"
fetch "libmsgpack-dev:arm64" "$MSGPACK_VERSION"
chmod -R a+rX "$out/debs"

# --- one initramfs per host: busybox, the modules the init loads, the init ---
build_initramfs() {  # ARCH DEBARCH BUSYBOX MODULES...
    local arch=$1 debarch=$2 busybox=$3; shift 3
    local dir=$out/$arch stamp=$out/$arch/.built
    local want
    want=$( (cat "$here/pins.env" "$here/init.sh"; echo "$*") | sha256sum | cut -c1-16)
    [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && return
    log "building the $arch host image"
    rm -rf "$dir" && mkdir -p "$dir"
    dpkg -x "$out/debs/linux-image-$KERNEL_ABI-${debarch}_"*.deb "$dir/kernel"
    local kver
    kver=$(ls "$dir/kernel/lib/modules")
    cp "$dir/kernel/boot/vmlinuz-$kver" "$dir/vmlinuz"
    depmod -b "$dir/kernel" "$kver"
    local ird=$dir/initramfs
    mkdir -p "$ird"/{bin,dev,proc,sys,newroot,lib/modules}
    cp "$busybox" "$ird/bin/busybox"
    cp "$here/init.sh" "$ird/init"
    chmod +x "$ird/init" "$ird/bin/busybox"
    : > "$ird/modules.order"
    local m f
    for m in "$@"; do
        # insmod lines, dependencies first, each module once
        modprobe -d "$dir/kernel" -S "$kver" --show-depends "$m" | awk '$1 == "insmod" {print $2}' |
        while read -r f; do
            local rel=${f#"$dir/kernel/lib/modules/$kver/"}
            grep -qx "$rel" "$ird/modules.order" && continue
            mkdir -p "$ird/lib/modules/$(dirname "$rel")"
            cp "$f" "$ird/lib/modules/$rel"
            echo "$rel" >> "$ird/modules.order"
        done
    done
    (cd "$ird" && find . | cpio -o -H newc --quiet | gzip -1) > "$dir/initramfs.cpio.gz"
    rm -rf "$dir/kernel" "$ird"
    echo "$want" > "$stamp"
}

for a in amd64 arm64; do
    [ -x "$out/busybox-$a/bin/busybox" ] || dpkg -x "$out/debs/busybox-static_"*"_$a.deb" "$out/busybox-$a"
done
bb_arm64=$out/busybox-arm64
# vhost_vsock: the peer VMM (QEMU's vhost-vsock-device) and AF_VSOCK to its guests (tests/e2e)
# dummy: the interface passt takes the guests' address and gateway from (docs/network.md)
build_initramfs x86_64 amd64 "$out/busybox-amd64/bin/busybox" virtio_pci 9pnet_virtio 9p kvm-amd \
    vhost_vsock dummy
build_initramfs aarch64 arm64 "$bb_arm64/bin/busybox" virtio_pci virtio_mmio 9pnet_virtio 9p \
    vhost_vsock dummy

# --- the guest side: cloud kernels as MicroVMs boot them, msgpack-c for the guest agent ---
for pair in x86_64:amd64 aarch64:arm64; do
    arch=${pair%%:*} debarch=${pair#*:}
    deb=$(ls "$out/debs/linux-image-$KERNEL_ABI-cloud-${debarch}_"*.deb)
    # the package's name, not its path: one host tree reached by two paths (a symlinked cache)
    # must not unpack again and again
    want=$( (cat "$here/guest_kernel.py"; basename "$deb") | sha256sum | cut -c1-16)
    [ "$(cat "$out/guest-$arch/.built" 2>/dev/null)" = "$want" ] && continue
    log "unpacking the $arch guest kernel"
    python3 "$here/guest_kernel.py" "$arch" "$deb" "$out/guest-$arch" >/dev/null
    chmod -R a+rX "$out/guest-$arch"
    echo "$want" > "$out/guest-$arch/.built"
done
for a in amd64 arm64; do
    [ -f "$out/msgpack-$a/.built" ] && continue
    rm -rf "$out/msgpack-$a"
    dpkg -x "$out/debs/libmsgpack-dev_"*"_$a.deb" "$out/msgpack-$a"
    touch "$out/msgpack-$a/.built"
done

# --- the aarch64 host's userland: Debian's arm64 python3.11 and the project's test wheels ---
# (the host root seen over 9p is x86_64; arm64 programs run from this tree, chrooted)
arm64_libs=(gcc-12-base libbz2-1.0 libc6 libcom-err2 libcrypt1 libdb5.3 libexpat1 libffi8
    libgcc-s1 libstdc++6 libgdbm6 libgssapi-krb5-2 libk5crypto3 libkeyutils1 libkrb5-3 libkrb5support0
    liblzma5 libncursesw6 libnsl2 libreadline8 libsqlite3-0 libssl3 libtinfo6 libtirpc-common
    libtirpc3 libuuid1 media-types readline-common zlib1g passt)
arm64_python=(python3.11 python3.11-minimal libpython3.11-minimal libpython3.11-stdlib
    libpython3.11-dev libpython3.11)
# QEMU as the peer VMM inside the aarch64 host (tests/e2e/test_guest_agent.py): the libraries its
# binary needs (checked below against its ELF NEEDED entries), not the package's full Depends
arm64_qemu_libs=(libaio1 libbpf1 libcapstone4 libfdt1 libfuse3-3 libglib2.0-0 libgmp10
    libgnutls30 libhogweed6 libibverbs1 libjpeg62-turbo libnettle8 libnuma1 libpixman-1-0 libpmem1
    libpng16-16 librdmacm1 libsasl2-2 libseccomp2 libslirp0 libudev1 liburing2 libvdeplug2 libzstd1
    libdaxctl1 libelf1 libexecs0 libidn2-0 libmount1 libndctl6 libnl-3-200 libnl-route-3-200
    libp11-kit0 libpcre2-8-0 libselinux1 libtasn1-6 libunistring2 libblkid1 libkmod2)
userland=$out/aarch64-userland
USERLAND_RECIPE=4   # bump when the steps below change
# the project's dependencies are part of it: a new one must reach the arm64 host too
want=$( (cat "$here/pins.env" "$here/../pyproject.toml";
         echo "${arm64_libs[*]} ${arm64_python[*]} ${arm64_qemu_libs[*]} $USERLAND_RECIPE") |
    sha256sum | cut -c1-16)
if [ "$(cat "$userland/.built" 2>/dev/null)" != "$want" ]; then
    log "building the aarch64 userland"
    mkdir -p "$out/debs/arm64"
    for p in "${arm64_libs[@]}" "${arm64_qemu_libs[@]}"; do
        ls "$out/debs/arm64/${p}_"*.deb >/dev/null 2>&1 ||
            (cd "$out/debs/arm64" && apt-get download -q "$p:arm64" >/dev/null 2>&1) ||
            (cd "$out/debs/arm64" && apt-get download -q "$p" >/dev/null 2>&1) ||   # Arch: all
            { log "cannot download $p:arm64"; exit 1; }
    done
    for p in "${arm64_python[@]}"; do
        ls "$out/debs/arm64/${p}_"*.deb >/dev/null 2>&1 ||
            (cd "$out/debs/arm64" && apt-get download -q "$p:arm64=$PYTHON_ARM64_VERSION" >/dev/null 2>&1) ||
            (cd "$out/debs/arm64" && apt-get download -q "$p:arm64" >/dev/null 2>&1) ||
            { log "cannot download $p:arm64"; exit 1; }
    done
    ls "$out/debs/arm64/qemu-system-arm_"*.deb >/dev/null 2>&1 ||
        (cd "$out/debs/arm64" && apt-get download -q "qemu-system-arm:arm64=$QEMU_ARM64_VERSION" >/dev/null 2>&1) ||
        (cd "$out/debs/arm64" && apt-get download -q "qemu-system-arm:arm64" >/dev/null 2>&1) ||
        { log "cannot download qemu-system-arm:arm64"; exit 1; }
    rm -rf "$userland" && mkdir -p "$userland"
    for d in "$out/debs/arm64/"*.deb; do dpkg -x "$d" "$userland"; done
    mkdir -p "$userland/bin"
    cp "$bb_arm64/bin/busybox" "$userland/bin/busybox"
    for t in sh cat ls env mkdir rm uname grep sed head tail sleep; do
        [ -e "$userland/bin/$t" ] || ln -s busybox "$userland/bin/$t"
    done
    ln -sf python3.11 "$userland/usr/bin/python3"
    rm -f "$userland/usr/bin/qemu-system-arm"     # only the aarch64 system emulator is used
    # every shared library QEMU needs must be in the tree (the chroot has nothing else)
    missing_so=$(for f in "$userland/usr/bin/qemu-system-aarch64" \
                          $(find "$userland" -name '*.so*' -type f); do
            aarch64-linux-gnu-readelf -d "$f" 2>/dev/null | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'
        done | sort -u | while read -r so; do
            [ -n "$(find "$userland" -name "$so" -print -quit)" ] || echo "$so"
        done)
    [ -z "$missing_so" ] || { log "the arm64 userland lacks: $missing_so"; exit 1; }
    # the project's Python dependencies and its test tools, as aarch64 wheels
    deps=$(python3 - "$here/../pyproject.toml" <<'PY'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
print(" ".join(p["dependencies"] + p["optional-dependencies"]["test"]))
PY
)
    "$cache/venv/bin/pip" install -q --target "$userland/site" --platform manylinux2014_aarch64 \
        --python-version 3.11 --implementation cp --only-binary=:all: $deps >/dev/null
    chmod -R a+rX "$userland"
    echo "$want" > "$userland/.built"
fi

log "provisioned in $(( $(date +%s) - t0 )) s"
echo "$out"
