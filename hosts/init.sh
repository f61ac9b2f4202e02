#!/bin/busybox sh
# PID 1 of an emulated KVM host: load the modules, mount the machine's root read-only over 9p,
# run the command the runner left in the results directory, write its status, power off.
# vmmd.results=DIR     the runner's results directory (same path as on the machine)
# vmmd.userland=DIR    run in this tree (the aarch64 userland) instead of the machine's root
# vmmd.binds=A,B,...   paths of the machine to see at the same paths (checkout, virtualenv...)
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do
    insmod "/lib/modules/$m" || echo "vmmd-host: insmod $m failed"
done
# a network for passt, the MicroVMs' user-mode network stack (docs/network.md): an interface
# with a default route that leads nowhere (the host has no NIC: nothing leaves it); passt gives
# guests this address and maps the gateway's to the host's loopback
ip link set lo up
{ ip link set dummy0 up && ip addr add 10.0.2.15/24 dev dummy0 &&
  ip route add default via 10.0.2.2; } || echo "vmmd-host: no network for passt (dummy0)"
arg() { sed -n "s/.*vmmd.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
results=$(arg results)
userland=$(arg userland)
binds=$(arg binds)
fail() { echo "vmmd-host: $*"; poweroff -f; }

mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=524288 hostroot /newroot ||
    fail "cannot mount the host root"
# a second view of the machine's root: paths under /tmp stay reachable after our tmpfs hides it
mkdir -p /hostview
mount -o bind /newroot /hostview
bind_in() {  # bind each of vmmd.binds into $1 at its own path
    for b in $(echo "$binds" | tr , ' '); do
        mkdir -p "$1$b" 2>/dev/null
        mount -o bind "/hostview$b" "$1$b" || fail "cannot bind $b"
    done
}
if [ -n "$userland" ]; then
    root=/userroot
    mkdir -p $root
    mount -t tmpfs -o size=75% root $root
    for d in $(ls "/newroot$userland"); do
        mkdir -p "$root/$d"
        mount -o bind "/newroot$userland/$d" "$root/$d"
    done
    mkdir -p $root/tmp $root/dev $root/proc $root/sys
    bind_in $root
else
    root=/newroot
    mount -t tmpfs -o size=75% tmp $root/tmp
    bind_in $root   # only those under /tmp need it, the rest are in place already
fi
mount -t devtmpfs dev $root/dev
mount -t proc proc $root/proc
mount -t sysfs sys $root/sys
mkdir -p "$root$results" 2>/dev/null
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 results "$root$results" ||
    fail "cannot mount the results directory"
echo "vmmd-host: up in $(cut -d' ' -f1 /proc/uptime) s, kvm: $( [ -c /dev/kvm ] && echo yes || echo no)"
# a heartbeat on the console: a host that stops printing it froze (QEMU's emulation, not the
# command), which the runner tells from a command that hangs (tests/hosts.py, host_broke)
( while sleep 30; do echo "vmmd-host: alive $(cut -d' ' -f1 /proc/uptime)" > /dev/console; done ) &
# The command's root is $root moved onto / in a mount namespace of its own (switch_root's
# steps), not a chroot: the kernel refuses user namespaces to a chrooted process, and passt
# (docs/network.md) sandboxes itself in one. This init keeps its own root, to report and power off.
unshare -m sh -c "cd $root && mount --move . / && exec chroot . /bin/sh -c \"cd /tmp && exec /bin/sh '$results/run.sh'\"" \
    > "$root$results/output" 2>&1
echo $? > "$root$results/status"
sync
echo "vmmd-host: done in $(cut -d' ' -f1 /proc/uptime) s"
poweroff -f
