"""What this host has, and the host-wide settings vtep needs.

Everything that asks the kernel about the current network namespace lives
here (addresses, devices, MTUs, bound UDP ports, privileges), so that the plan
and the desired state stay pure data: a pass gathers the facts it needs in one
step (underlay_facts) and hands them to the pure functions. The forwarding
sysctls, the one host-wide setting a node needs, are turned on here too.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct
from typing import NamedTuple

from .errors import HostMismatch, PermissionDenied
from .rtlink import RtLink

CAP_NET_ADMIN = 12


def has_net_admin() -> bool:
    """True when this process holds CAP_NET_ADMIN in its effective set."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def require_net_admin(what: str) -> None:
    if not has_net_admin():
        raise PermissionDenied(f"{what} needs root or CAP_NET_ADMIN (try sudo)")


def addresses() -> dict[str, str]:
    """Every address of this namespace -> the device that holds it."""
    with RtLink() as rt:
        names = {link.index: link.name for link in rt.links()}
        return {ip: names.get(index, "?") for ip, _, index in rt.addresses()}


def device_mtu(name: str) -> int:
    with RtLink() as rt:
        link = rt.link(name)
    if link is None:
        raise HostMismatch(f"underlay device {name} does not exist here")
    return link.mtu


class Underlay(NamedTuple):
    """The node's underlay device as this host has it."""
    dev: str
    mtu: int
    index: int


def underlay_facts(node) -> Underlay:
    """The node's underlay: the plan's underlay_dev, or the device that holds its
    underlay_ip; with its MTU and index, read through one netlink socket. Raises
    HostMismatch when neither is here."""
    with RtLink() as rt:
        links = {m.index: (m.name, m.mtu) for m in rt.links()}
        held = {ip: index for ip, _, index in rt.addresses()}
    ip = str(node.underlay_ip)
    if node.underlay_dev:
        index = next((i for i, (name, _) in links.items() if name == node.underlay_dev), None)
        if index is None:
            raise HostMismatch(f"underlay device {node.underlay_dev} does not exist here")
        if ip not in held:
            raise HostMismatch(f"underlay_ip {ip} of node {node.name!r} is not an address of "
                               "this host")
        return Underlay(node.underlay_dev, links[index][1], index)
    index = held.get(ip)
    if index is None:
        raise HostMismatch(f"underlay_ip {ip} of node {node.name!r} is not an address of this "
                           f"host (it has {', '.join(sorted(held, key=_ipkey)) or 'none'})")
    name, mtu = links.get(index, ("?", None))
    return Underlay(name, mtu, index)


def underlay(node) -> tuple[str, int]:
    """(device, MTU) of the node's underlay (see underlay_facts)."""
    u = underlay_facts(node)
    return u.dev, u.mtu


def _ipkey(a: str):
    x = ipaddress.ip_address(a)
    return (x.version, x)


def select_node(plan, name: str | None):
    """The node named, or the one whose underlay_ip is local."""
    if name:
        return plan.node(name)
    return plan.node_for_local(addresses())


def udp_sockets(port: int, ipv6: bool) -> list[str]:
    """Local addresses of the UDP sockets bound to `port` in this namespace."""
    path = "/proc/net/udp6" if ipv6 else "/proc/net/udp"
    out = []
    try:
        with open(path) as f:
            next(f, None)
            for line in f:
                local = line.split()[1]
                addr, p = local.rsplit(":", 1)
                if int(p, 16) != port:
                    continue
                # /proc prints each 32-bit word of the address as a host-order integer
                words = [int(addr[i:i + 8], 16) for i in range(0, len(addr), 8)]
                packed = b"".join(struct.pack("=I", w) for w in words)
                fam = socket.AF_INET6 if ipv6 else socket.AF_INET
                out.append(f"{socket.inet_ntop(fam, packed)}:{port}")
    except FileNotFoundError:
        pass
    return out


# CNI's bridge plugin turns these on for the same reason: the node routes between
# its pods' bridge and the overlay device.
FORWARDING = (("/proc/sys/net/ipv4/ip_forward", "net.ipv4.ip_forward"),
              ("/proc/sys/net/ipv6/conf/all/forwarding", "net.ipv6.conf.all.forwarding"))
PMTU_SYSCTL = ("/proc/sys/net/ipv4/ip_forward_use_pmtu", "net.ipv4.ip_forward_use_pmtu")


def enable_forwarding(df: str | None = None) -> list[str]:
    """Turn forwarding on; returns what it changed. Left on at exit: pods and other
    overlays on this node may rely on it by then, and a sysctl does not record who
    set it, so turning it off could cut traffic that is not ours.

    With `--df set` also net.ipv4.ip_forward_use_pmtu: a forwarding host ignores the
    path MTU it learns unless told otherwise, so the MTU the tunnel learns from the
    underlay's ICMP errors would never reach the pods whose traffic it routes."""
    done = []
    wanted = FORWARDING + ((PMTU_SYSCTL,) if df == "set" else ())
    for path, name in wanted:
        try:
            with open(path) as f:
                cur = f.read().strip()
        except FileNotFoundError:
            continue   # IPv6 disabled in this kernel: nothing to forward
        if cur == "1":
            continue
        try:
            with open(path, "w") as f:
                f.write("1\n")
        except OSError as e:
            raise PermissionDenied(f"cannot turn on {name} ({path}: {e.strerror})")
        why = ("forwarded pod traffic then honours the path MTU the tunnel learns (--df set)"
               if name == PMTU_SYSCTL[1] else "this node routes between its pods' bridge and "
               "the overlay, as the CNI bridge plugin does")
        done.append(f"turned on {name} (was {cur}): {why}")
    return done


# How IPv6 is set on our VTEP device (net.ipv6.conf.DEVICE.*), in the order written.
# With an IPv6 overlay: on, but with no link-local address (addr_gen_mode 1, "none") and
# no router advertisements taken: its neighbours are static, so it never needs neighbour
# discovery, and a link-local address would start DAD and router solicitations across the
# tunnel. addr_gen_mode goes first: turning disable_ipv6 off on a live device (one made
# without IPv6, or a plan that gained overlay6) then adds no link-local address (measured,
# kernel 6.18: no address at all until ours). What stays: one MLDv2 report from :: per
# device when IPv6 comes up (the groups ff02::1 and the solicited-node one), flooded to
# every peer; the kernel has no switch for it.
# Without one: off, set before the device goes up. With IPv6 on, the device sends its own
# multicast (MLD reports from :: even with addr_gen_mode none, for the all-routers group
# it joins once forwarding is on), flooded to every peer; and turning it off drops any
# IPv6 address, route and neighbour entry a plan that lost overlay6 left on the device.
IPV6_ON = (("addr_gen_mode", "1"), ("accept_ra", "0"), ("disable_ipv6", "0"))
IPV6_OFF = (("disable_ipv6", "1"),)


def device_ipv6(device: str, on: bool) -> list[str]:
    """Bring the device's IPv6 sysctls to the plan's (IPV6_ON with an IPv6 overlay, else
    IPV6_OFF); returns what it changed ("disable_ipv6 0 (was 1)"). Read first and written
    only when they differ, so that a pass that finds them right writes nothing. Without
    IPv6 in the kernel, off is nothing to do and on is an error."""
    conf = f"/proc/sys/net/ipv6/conf/{device}"
    done = []
    for key, want in IPV6_ON if on else IPV6_OFF:
        path = f"{conf}/{key}"
        try:
            with open(path) as f:
                cur = f.read().strip()
        except FileNotFoundError:
            if not on:
                return done
            raise HostMismatch(f"the plan has an IPv6 overlay but {device} has no IPv6 "
                               f"settings ({path} is missing: IPv6 is off in this kernel)")
        if cur == want:
            continue
        try:
            with open(path, "w") as f:
                f.write(want + "\n")
        except OSError as e:
            raise PermissionDenied(f"cannot set {key} = {want} on {device} ({path}: "
                                   f"{e.strerror})")
        done.append(f"{key} {want} (was {cur})")
    return done

