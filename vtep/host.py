"""What this host has: addresses, devices, MTUs, privileges (read-only, via netlink).

Everything that asks the kernel about the current network namespace lives
here, so that the plan stays pure data and the data paths share one view.
"""
from __future__ import annotations

import ipaddress
import os

from .errors import HostMismatch, PermissionDenied

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


def _ipr():
    from pyroute2 import IPRoute
    return IPRoute()


def addresses() -> dict[str, str]:
    """Every address of this namespace -> the device that holds it."""
    out = {}
    with _ipr() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for a in ipr.get_addr():
            ip = a.get_attr("IFA_ADDRESS") or a.get_attr("IFA_LOCAL")
            if ip:
                out[ip] = names.get(a["index"], "?")
    return out


def device_mtu(name: str) -> int:
    with _ipr() as ipr:
        links = ipr.link_lookup(ifname=name)
        if not links:
            raise HostMismatch(f"underlay device {name} does not exist here")
        return ipr.get_links(links[0])[0].get_attr("IFLA_MTU")


def underlay(node) -> tuple[str, int]:
    """(device, MTU) of the node's underlay: the plan's underlay_dev, or the device
    that holds its underlay_ip. Raises HostMismatch when neither is here."""
    held = addresses()
    ip = str(node.underlay_ip)
    if node.underlay_dev:
        mtu = device_mtu(node.underlay_dev)
        if ip not in held:
            raise HostMismatch(f"underlay_ip {ip} of node {node.name!r} is not an address of "
                               "this host")
        return node.underlay_dev, mtu
    dev = held.get(ip)
    if dev is None:
        raise HostMismatch(f"underlay_ip {ip} of node {node.name!r} is not an address of this "
                           f"host (it has {', '.join(sorted(held, key=_ipkey)) or 'none'})")
    return dev, device_mtu(dev)


def _ipkey(a: str):
    x = ipaddress.ip_address(a)
    return (x.version, x)


def select_node(plan, name: str | None):
    """The node named, or the one whose underlay_ip is local."""
    if name:
        return plan.node(name)
    return plan.node_for_local(addresses())
