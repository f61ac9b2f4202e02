#!/bin/busybox sh
# PID 1 of a vmmd guest (docs/guest.md): load the modules the initramfs carries, mount the
# kernel filesystems, bring up lo and the network (vmmd.net=), optionally switch to an ext4 root on a block device, then
# exec the guest agent, which stays PID 1 (it reaps every orphan).
# Kernel command line:
#   root=/dev/vda        mount this ext4 device as / (absent: stay in the initramfs)
#   rootfstype=ext4      rootflags=OPTS      ro (default rw)
#   vmmd.agent_args=...  extra agent arguments, comma-separated
/bin/busybox --install -s /bin
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=0755,nosuid,nodev run /run
say() { echo "vmmd-init: $*" > /dev/console; }
while read -r m; do
    insmod "/lib/modules/$m" || say "insmod $m failed"
done < /etc/vmmd/modules
ip link set lo up || say "cannot bring up lo"
# the network script and a busybox for it, where they survive switch_root (docs/network.md)
mkdir -p /run/vmmd && cp /bin/busybox /run/vmmd/busybox && cp /sbin/vmmd-net /run/vmmd/net

arg() { for w in $(cat /proc/cmdline); do case "$w" in "$1="*) echo "${w#*=}";; esac; done; }
root=$(arg root)
agent_args="--system-ops $(arg vmmd.agent_args | tr , ' ')"
if [ -z "$root" ]; then
    /run/vmmd/net boot
    say "agent starting at $(cut -d' ' -f1 /proc/uptime) s"
    exec /sbin/vmmd-agent $agent_args
fi

mode=rw
grep -qw ro /proc/cmdline && mode=ro
opts=$mode
[ -n "$(arg rootflags)" ] && opts="$opts,$(arg rootflags)"
fstype=$(arg rootfstype)
i=0
while [ ! -b "$root" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
if ! mount -t "${fstype:-ext4}" -o "$opts" "$root" /newroot; then
    say "cannot mount $root; staying in the initramfs"
    /run/vmmd/net boot
    exec /sbin/vmmd-agent $agent_args
fi
for d in proc sys dev run tmp; do [ -d "/newroot/$d" ] || mkdir -p "/newroot/$d"; done
# the agent runs from /run (tmpfs): it keeps running while the root filesystem is frozen
cp /sbin/vmmd-agent /run/vmmd-agent
say "agent starting on $root at $(cut -d' ' -f1 /proc/uptime) s"
for d in proc sys dev run; do mount --move "/$d" "/newroot/$d"; done
chroot /newroot /run/vmmd/net boot   # its resolv.conf goes to the new root
exec switch_root /newroot /run/vmmd-agent $agent_args
