"""The device against the plan: VNI, port (8472 against 4789 called out), local address,
underlay binding, learning, MTU against the underlay's, DF; and a vxlan device of
someone else's on the same port, which takes the plan's traffic or keeps ours down."""
from __future__ import annotations

from .. import host, wire
from ..linkfacts import DF, DF_NAMES, device_diffs
from ..vxlanlink import bound_index
from .facts import Facts
from .finding import Finding, ok

WHY = {
    "vni": "the VNI is the overlay's name on the wire (RFC 7348 section 5): peers drop "
           "what carries another",
    "local": "peers send to and expect packets from the plan's underlay address",
    "dev": "the device follows the wrong underlay device's MTU and routes",
    "learning": "learning lets any sender rewrite the fdb that vtep programs statically "
                "(RFC 7348 section 4.1)",
    "external": "a collect-metadata device ignores its own fdb",
    "remote": "a default remote sends every unknown frame to one place",
    "udp_checksum": "the outer UDP checksum setting differs from the plan's",
    "kind": "the device is not a vxlan device",
}


def check(f: Facts) -> list[Finding]:
    out = []
    d, want = f.dev, f.want
    if f.under is None:
        out.append(Finding("host.underlay", "error", f.under_error or "no underlay",
                           "without its underlay address the node cannot send or receive "
                           "VXLAN", "add the address, or fix underlay_ip in the plan"))
        return out
    out.append(ok("host.underlay", f"{f.under.dev}, MTU {f.under.mtu}"))
    if d is None:
        out.append(Finding("device.missing", "error", f"no device {f.device}",
                           "this node sends nothing into the overlay",
                           f"vtep run --{f.mode} ... --node {f.node.name}"))
        out += foreign_on_port(f)
        return out
    if f.mode == "kernel":
        bad, repairs = device_diffs(want.device, d, bound_index(want.device, f.under),
                                    {x.index: x.name for x in f.links})
        for item in bad:
            field_, _, values = item.partition(": ")
            if field_ == "port":
                out.append(port_finding(f, d.port))
                continue
            out.append(Finding(f"device.{field_.replace('_', '-')}", "error",
                               f"{f.device} {field_}: {values} (plan vs device)",
                               WHY.get(field_, ""), f"vtep run --{f.mode} --replace ..."))
        if not bad:
            out.append(ok("device.identity", f"{f.device}: vni {d.vni}, port {d.port}, "
                                             f"local {d.local}, nolearning"))
    else:
        repairs = {}
        if d.mtu != want.device.mtu:
            repairs["mtu"] = want.device.mtu
    if "mtu" in repairs:
        out.append(Finding("device.mtu", "warning", f"{f.device} MTU {d.mtu}, the plan's "
                           f"is {want.device.mtu}", "pods and the device disagree on the "
                           "largest frame", "the agent repairs it; else `vtep run --once`"))
    limit = f.under.mtu - wire.overhead(f.plan.ipv6_underlay)
    if d.mtu is not None and d.mtu > limit:
        out.append(Finding("device.mtu-above-underlay", "error",
                           f"{f.device} MTU {d.mtu} > underlay {f.under.dev} MTU "
                           f"{f.under.mtu} - {f.under.mtu - limit}",
                           "full-size frames do not fit the encapsulation: fragmented or "
                           "dropped (RFC 7348 section 4.3)",
                           f"set the plan's mtu to {limit} or less, or use --mtu auto"))
    if d.df is not None and d.df != DF["set"] and f.mode == "kernel" and \
            not f.plan.ipv6_underlay:   # DF is IPv4's: IPv6 never fragments on the way
        out.append(Finding("device.df", "info",
                           f"{f.device} df {DF_NAMES.get(d.df, d.df)}",
                           "outer packets may be fragmented on the way instead of "
                           "signalling a too-small path", "vtep run --df set"))
    if not d.up:
        out.append(Finding("device.down", "error", f"{f.device} is down",
                           "nothing goes through it", f"ip link set {f.device} up"))
    out += addresses(f)
    out += foreign_on_port(f)
    return out


def addresses(f: Facts) -> list[Finding]:
    """The device's VTEP addresses against the plan's (a /32, a /128 with an IPv6 overlay)
    and IPv6 on it exactly when the plan has an IPv6 overlay."""
    if f.addresses is None or f.want is None:
        return []
    out = []
    want, have = set(f.want.device.addresses), set(f.addresses)
    fix = ("the agent repairs it at its next pass" if f.agent_pid is not None
           else f"vtep run --{f.mode} --once ...")
    v6 = f.want.device.address6 is not None
    if v6 and f.ipv6_off:
        out.append(Finding("device.ipv6-off", "error", f"{f.device} has IPv6 off "
                           "(disable_ipv6 1) but the plan has an IPv6 overlay",
                           "it can hold no IPv6 address, neighbour or route: IPv6 pods "
                           "reach no other node", fix))
    elif v6 and f.ipv6_conf:
        off = [f"{k} {f.ipv6_conf[k]} (plan: {w})" for k, w in host.IPV6_ON
               if k != "disable_ipv6" and k in f.ipv6_conf and f.ipv6_conf[k] != w]
        if off:
            out.append(Finding("device.ipv6-settings", "warning",
                               f"{f.device}: {', '.join(off)}",
                               "addr_gen_mode other than 1 gives the device a link-local "
                               "address, whose duplicate address detection and router "
                               "solicitations cross the tunnel to every peer; accept_ra other "
                               "than 0 lets a router advertisement on the overlay add routes",
                               fix))
    for a in sorted(want - have):
        out.append(Finding("device.address-missing", "error",
                           f"{f.device} lacks its VTEP address {a}",
                           "the node's own packets into the overlay have no source address "
                           "of that family", fix))
    for a in sorted(have - want):
        out.append(Finding("device.address-extra", "warning",
                           f"{f.device} holds {a}, not in the plan",
                           "an address with a prefix adds a connected route onto the tunnel; "
                           "an IPv6 link-local one starts router solicitations across it", fix))
    if not out:
        out.append(ok("device.addresses", f"{f.device}: {' '.join(f.want.device.addresses)}"))
    return out


def port_finding(f: Facts, have: int | None) -> Finding:
    plan = f.plan.port
    note = ""
    if {plan, have} == {wire.VXLAN_PORT, wire.VXLAN_PORT_LINUX_LEGACY}:
        note = (f" ({wire.VXLAN_PORT_LINUX_LEGACY} is the Linux kernel's old default, which "
                f"flannel uses; {wire.VXLAN_PORT} is IANA's, RFC 7348)")
    return Finding("device.port", "error", f"{f.device} sends to UDP {have}, the plan says "
                   f"{plan}{note}", "peers listen on the plan's port: nothing arrives",
                   f"vtep run --{f.mode} --replace ... (or set port = {have} in the plan "
                   "on every node)")


def foreign_on_port(f: Facts) -> list[Finding]:
    """Other vxlan devices on the plan's port. With another VNI they share the kernel's
    UDP socket, which hands each packet to the device of its VNI: harmless. With the same
    VNI, or in collect-metadata mode (OVS's vxlan_sys_4789, Cilium's), the two cannot be
    up together (EADDRINUSE) or the other takes every VNI's packets."""
    out = []
    for x in f.links:
        if x.kind != "vxlan" or x.port != f.plan.port or x.name == f.device:
            continue
        if x.external or x.vni == f.plan.vni:
            what = "collect-metadata (every VNI)" if x.external else f"the same VNI {x.vni}"
            out.append(Finding("device.foreign-on-port", "error",
                               f"{x.name} also uses UDP {x.port}, with {what}",
                               "only one of the two can be up, or it takes this node's "
                               "VXLAN", f"ip link del {x.name}, or give it another port"))
        else:
            out.append(Finding("device.shared-port", "info",
                               f"{x.name} (vni {x.vni}) also uses UDP {x.port}",
                               "the kernel hands each packet to the device of its VNI", ""))
    return out
