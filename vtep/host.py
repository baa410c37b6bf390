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


def disable_ipv6(device: str) -> None:
    """No IPv6 on our VTEP device (net.ipv6.conf.DEVICE.disable_ipv6 = 1, set before it
    goes up). The overlay is IPv4; with IPv6 on, the device sends its own multicast
    (router solicitations, and MLD reports, from :: even with addrgenmode none, for the
    all-routers groups it joins once forwarding is on), and every such frame is flooded
    to every peer. Nothing to do where the kernel has no IPv6."""
    path = f"/proc/sys/net/ipv6/conf/{device}/disable_ipv6"
    try:
        with open(path, "w") as f:
            f.write("1\n")
    except FileNotFoundError:
        return
    except OSError as e:
        raise PermissionDenied(f"cannot turn IPv6 off on {device} ({path}: {e.strerror})")
