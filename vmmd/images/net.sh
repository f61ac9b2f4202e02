#!/run/vmmd/busybox sh
# vmmd-net: the guest's network (docs/network.md). init runs `vmmd-net boot` before the agent;
# the host runs `vmmd-net restored MAC` through the agent after every restore (each copy of a
# snapshot has its own MAC and its own backend). Lives in /run/vmmd with its own busybox (the
# interpreter above, and what udhcpc runs it with), so it works on any root filesystem, even one
# without a shell or a busybox.
#   vmmd.net=dhcp                          DHCP on the first ethernet interface
#   vmmd.net=ADDR/PREFIX,GATEWAY[,DNS]     a static address
bb=/run/vmmd/busybox
[ -x $bb ] || bb=/bin/busybox
here=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
say() { echo "vmmd-net: $*" > /dev/console; }

iface() {
    for d in /sys/class/net/*; do
        n=${d##*/}
        [ "$n" = lo ] && continue
        [ "$(cat "$d/type" 2>/dev/null)" = 1 ] && { echo "$n"; return 0; }
    done
    return 1
}

resolver() {  # write resolv.conf where there is one to write
    [ -n "$1" ] || return 0
    { for s in $1; do echo "nameserver $s"; done; } > /etc/resolv.conf 2>/dev/null ||
        say "cannot write /etc/resolv.conf (read-only root?)"
}

static() {  # IFACE ADDR/PREFIX,GW[,DNS]
    local addr gw dns
    addr=$(echo "$2" | cut -d, -f1); gw=$(echo "$2" | cut -d, -f2); dns=$(echo "$2" | cut -d, -f3)
    $bb ip addr flush dev "$1"
    $bb ip addr add "$addr" dev "$1" && $bb ip route add default via "$gw" dev "$1"
    resolver "$dns"
}

dhcp() {  # IFACE: one lease, at most ~5 s; the backend (passt) answers at once
    $bb udhcpc -i "$1" -s "$here" -q -n -f -t 5 -T 1 >/dev/null 2>&1
}

up() {  # IFACE
    local how
    how=$(sed -n 's/.*vmmd\.net=\([^ ]*\).*/\1/p' /proc/cmdline)
    [ -n "$how" ] || return 0
    $bb ip link set "$1" up
    case "$how" in
        dhcp) dhcp "$1" || { say "no DHCP lease on $1"; return 1; } ;;
        *) static "$1" "$how" ;;
    esac
}

case "$1" in
    boot)
        i=$(iface) || { grep -q vmmd.net= /proc/cmdline && say "no network interface"; exit 0; }
        up "$i"
        ;;
    restored)   # MAC: after a restore
        i=$(iface) || { echo "no network interface" >&2; exit 1; }
        $bb ip link set "$i" down
        [ -n "$2" ] && { $bb ip link set "$i" address "$2" || exit 1; }
        $bb ip addr flush dev "$i"
        up "$i" || exit 1
        $bb ip -4 -o addr show dev "$i"
        ;;
    deconfig)   # udhcpc's events, with the lease in the environment
        $bb ip addr flush dev "$interface"
        ;;
    bound|renew)
        $bb ip addr flush dev "$interface"
        $bb ip addr add "$ip/${mask:-24}" dev "$interface"
        [ -n "$mtu" ] && $bb ip link set "$interface" mtu "$mtu"
        for r in $router; do $bb ip route add default via "$r" dev "$interface"; break; done
        resolver "$dns"
        ;;
    *)
        echo "usage: vmmd-net boot | restored [MAC]" >&2
        exit 2
        ;;
esac
exit 0
