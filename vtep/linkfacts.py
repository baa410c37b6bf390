"""A device as the kernel reports it, and how it differs from the plan's (pure).

LinkFacts is read from one RTM_NEWLINK message (pyroute2's); device_diffs()
compares it with the desired state.Device and says what needs the device to be
recreated (messages read "field: plan vs existing", as flannel's do: "vni: 10
vs 42") and what the kernel changes in place. `vtep run` and `vtep down` ask
the same identity_diffs(): whether a device is the plan's.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from . import owner, state
from .errors import Incompatible, VtepError

IFF_UP = 0x1
DF = {"unset": 0, "set": 1, "inherit": 2}     # IFLA_VXLAN_DF (linux/if_link.h)
DF_NAMES = {v: k for k, v in DF.items()}


@dataclass(frozen=True)
class LinkFacts:
    kind: str | None          # "vxlan", "tun", "veth", ... (None: no IFLA_LINKINFO)
    index: int
    name: str | None = None
    mtu: int | None = None
    mac: str | None = None
    up: bool = False
    alias: str | None = None  # vtep's mark (owner.alias) when vtep made it
    # vxlan devices only
    vni: int | None = None
    port: int | None = None
    local: str | None = None
    link: int | None = None   # the lower (underlay) device's index, None: unbound
    learning: bool = False
    external: bool = False    # collect-metadata mode
    group: str | None = None  # a default remote (multicast group or unicast peer)
    df: int | None = None
    udp_csum: bool | None = None  # the outer UDP checksum is sent (IPv4: udpcsum)


def facts(msg) -> LinkFacts:
    """The settings we compare, from a pyroute2 RTM_NEWLINK message."""
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info else None
    common = dict(kind=kind, index=msg["index"], mtu=msg.get_attr("IFLA_MTU"),
                  mac=msg.get_attr("IFLA_ADDRESS"), up=bool(msg["flags"] & IFF_UP),
                  name=msg.get_attr("IFLA_IFNAME"), alias=msg.get_attr("IFLA_IFALIAS"))
    data = info.get_attr("IFLA_INFO_DATA") if info and kind == "vxlan" else None
    if data is None:
        return LinkFacts(**common)
    g = data.get_attr
    group = g("IFLA_VXLAN_GROUP") or g("IFLA_VXLAN_GROUP6")
    local6 = g("IFLA_VXLAN_LOCAL6")
    # the kernel reports both families' settings; the one that applies is the local
    # address's (IPv6: the zero-checksum-on-transmit flag, inverted)
    csum = g("IFLA_VXLAN_UDP_CSUM") if not local6 else not g("IFLA_VXLAN_UDP_ZERO_CSUM6_TX")
    return LinkFacts(**common, vni=g("IFLA_VXLAN_ID"), port=g("IFLA_VXLAN_PORT"),
                     local=g("IFLA_VXLAN_LOCAL") or local6,
                     link=g("IFLA_VXLAN_LINK"), learning=bool(g("IFLA_VXLAN_LEARNING")),
                     external=bool(g("IFLA_VXLAN_COLLECT_METADATA")),
                     group=None if group in ("0.0.0.0", "::") else group,
                     df=g("IFLA_VXLAN_DF"), udp_csum=None if csum is None else bool(csum))


def ip_eq(a, b) -> bool:
    try:
        return (a is not None and b is not None
                and ipaddress.ip_address(a) == ipaddress.ip_address(b))
    except ValueError:
        return False


def identity_diffs(vni: int, port: int, local: str, have: LinkFacts) -> list[str]:
    """How an existing device differs from the plan's in what makes it that device:
    kind, VNI, port and local address (RFC 7348 s5: a VTEP is its address, port and
    VNI). Empty: it is the plan's device, whatever else drifted."""
    if have.kind != "vxlan":
        return [f"kind: vxlan vs {have.kind or 'none'}"]
    bad = []
    if have.vni != vni:
        bad.append(f"vni: {vni} vs {have.vni}")
    if not ip_eq(have.local, local):
        bad.append(f"local: {local} vs {have.local or 'none'}")
    if have.port != port:
        bad.append(f"port: {port} vs {have.port}")
    return bad


def device_diffs(want: state.Device, have: LinkFacts, underlay_index: int | None,
                 names: dict, df: str | None = None) -> tuple[list[str], dict]:
    """(incompatible, repairs) between the plan's device and an existing one.

    Incompatible settings (kind, VNI, local, port, underlay device, learning,
    external/collect-metadata mode, a default remote, the outer UDP checksum) need the device to be
    recreated (--replace); `repairs` maps mtu/mac/df to the plan's values for
    settings the kernel changes in place. Messages read "field: plan vs existing".
    """
    repairs = {}
    if have.mtu != want.mtu:
        repairs["mtu"] = want.mtu
    if (have.mac or "").lower() != want.mac:
        repairs["mac"] = want.mac
    bad = identity_diffs(want.vni, want.port, want.local, have)
    if have.kind != "vxlan":   # (the userspace path's TAP still takes the repairs)
        return bad, repairs
    if have.link != underlay_index:
        planned = want.underlay_dev if underlay_index else "none"
        bad.append(f"dev: {planned} vs {names.get(have.link, 'none')}")
    if have.learning:
        # RFC 7348 s4.1 learning would let any sender rewrite the fdb we program statically
        bad.append("learning: off vs on")
    if have.external:
        bad.append("external: off vs on")
    if have.group:
        bad.append(f"remote: none vs {have.group}")
    if have.udp_csum is not None and have.udp_csum != want.udp_checksum:
        # the kernel refuses to change it on a live device ("Cannot change UDP_CSUM flag")
        bad.append(f"udp_checksum: {str(want.udp_checksum).lower()} vs "
                   f"{str(have.udp_csum).lower()}")
    if df is not None and have.df != DF[df]:
        repairs["df"] = df
    return bad, repairs


class NotOurs(Incompatible):
    """A device of that name that is not the plan's, or not vtep's: it is left alone."""

    def __init__(self, device: str, diffs: list[str], advice: str = ""):
        self.device, self.diffs = device, diffs
        VtepError.__init__(self, f"{device} is not the plan's device ({', '.join(diffs)}; "
                                 f"plan vs existing): not removing it"
                                 + (f"; {advice}" if advice else ""))


def require_made_by_vtep(name: str, have: LinkFacts, diffs=()) -> None:
    """`--replace` and `vtep down` delete only a device vtep made (its alias says so):
    never a veth, a bridge or a hand-made vxlan device that happens to have the name.
    `diffs`: how it differs from the plan besides, named in the same message."""
    if not owner.made_by_vtep(have.alias):
        alias = f"alias {have.alias!r}" if have.alias else "no vtep alias"
        raise NotOurs(name, [*diffs, f"made by: vtep vs someone else (kind "
                                     f"{have.kind or 'none'}, {alias})"],
                      f"remove it yourself (ip link del {name}) if it is not needed, or "
                      "choose another --device")
