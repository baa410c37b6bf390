"""Device-level netlink calls both device backends make (through pyroute2's IPRoute).

One message each: reading a link, naming links, deleting one, and the settings
every vtep device carries whatever its kind (vtep's mark, MTU, MAC, the VTEP
addresses, a /32 and/or a /128, their IPv6 sysctls, up). Every kernel refusal
becomes a one-line NetlinkRefused naming the action. Each change made is noted
in `notes` (one log line each), which the reconciler collects as the pass's
changes.
"""
from __future__ import annotations

import errno
import logging
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import host, owner, state
from .linkfacts import LinkFacts
from .netlink import NetlinkRefused
from .nlmsg import IFA_F_NODAD

log = logging.getLogger("vtep")


class Links:
    def __init__(self):
        try:
            self.ipr = IPRoute(groups=0)
        except OSError as e:
            raise NetlinkRefused(f"cannot open a netlink socket: {e.strerror}")
        self.notes: list[str] = []

    def close(self) -> None:
        self.ipr.close()

    def note(self, line: str) -> None:
        log.info(line)
        self.notes.append(line)

    def call(self, what: str, fn, *a, **kw):
        try:
            return fn(*a, **kw)
        except NetlinkError as e:
            raise NetlinkRefused(f"{what}: {e.args[1] if len(e.args) > 1 else e}")
        except OSError as e:
            raise NetlinkRefused(f"{what}: {e.strerror or e}")

    def get(self, name: str | None = None, index: int | None = None):
        """The RTM_NEWLINK message of a device, or None when there is none."""
        try:
            kw = {"index": index} if index else {"ifname": name}
            return self.ipr.link("get", **kw)[0]
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return None
            raise NetlinkRefused(f"reading {name or index}: {e.args[1]}")

    def dump(self) -> list:
        return self.call("listing links", self.ipr.link, "dump")

    def names(self) -> dict:
        return {m["index"]: m.get_attr("IFLA_IFNAME") for m in self.dump()}

    def index_of(self, name: str) -> int | None:
        found = self.ipr.link_lookup(ifname=name)
        return found[0] if found else None

    def delete(self, index: int, name: str) -> None:
        try:
            self.ipr.link("del", index=index)
        except NetlinkError as e:
            if e.code != errno.ENODEV:
                raise NetlinkRefused(f"deleting {name}: {e.args[1]}")

    def mark(self, name: str, idx: int, alias: str | None, node: str, mode: str,
             adopted: bool = False) -> None:
        """Put vtep's mark (owner.alias) on the device, so that every later invocation,
        whatever its --state-dir, knows vtep made it; repaired like any other drift."""
        mark = owner.alias(node, mode)
        if alias == mark:
            return
        self.call(f"setting the alias of {name}", self.ipr.link, "set", index=idx, ifalias=mark)
        if adopted:
            self.note(f"marked {name} as vtep's (alias {mark!r}; was "
                      f"{repr(alias) if alias else 'none'})")

    def repair(self, want: state.Device, have: LinkFacts, repairs: dict) -> None:
        """The MTU and MAC, which the kernel changes in place."""
        if "mtu" in repairs:
            self.call(f"setting the MTU of {want.name}", self.ipr.link, "set", index=have.index,
                      mtu=want.mtu)
            self.note(f"changed {want.name} mtu {want.mtu} (was {have.mtu})")
        if "mac" in repairs:
            self.call(f"setting the address of {want.name}", self.ipr.link, "set",
                      index=have.index, address=want.mac)
            self.note(f"changed {want.name} address {want.mac} (was {have.mac})")

    def addresses(self, want: state.Device, idx: int) -> None:
        """The VTEP addresses: the IPv4 one as a /32 (as flannel and Calico do: no prefix
        route), the IPv6 one as a /128 without DAD (IFA_F_NODAD, `nodad`: the address is
        the plan's, and DAD would send a neighbour solicitation to every peer and hold the
        address tentative meanwhile), and no other address of either family: one would
        add a connected route onto the tunnel, and a link-local IPv6 address (a device
        made with addr_gen_mode 0) starts router solicitations across it. A family the
        plan has no overlay for keeps no address (IPv6 is off then: host.device_ipv6)."""
        for family, planned, plen, flags in ((socket.AF_INET, want.address, 32, 0),
                                             (socket.AF_INET6, want.address6, 128,
                                              IFA_F_NODAD)):
            have = []
            for a in self.call(f"listing addresses of {want.name}", self.ipr.addr, "dump",
                               index=idx, family=family):
                ip = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
                have.append((ip, a["prefixlen"]))
            for ip, n in have:
                if (ip, n) != (planned, plen):
                    self.call(f"removing {ip}/{n} from {want.name}", self.ipr.addr, "del",
                              index=idx, address=ip, prefixlen=n)
                    self.note(f"removed address {ip}/{n} from {want.name} (not in the plan)")
            if planned and (planned, plen) not in have:
                self.call(f"adding {planned}/{plen} to {want.name}", self.ipr.addr, "add",
                          index=idx, address=planned, prefixlen=plen, flags=flags)
                self.note(f"added address {planned}/{plen} on {want.name}")

    def ipv6(self, want: state.Device, created: bool) -> None:
        """The device's IPv6 sysctls as the plan's overlay wants them (host.device_ipv6),
        before its addresses and before it goes up; a change to a device that was there
        (drift, a device made without IPv6, a plan that gained or lost overlay6) is
        noted, the settings of a device just made are part of its creation."""
        on = want.address6 is not None
        done = host.device_ipv6(want.name, on)
        if done and not created:
            self.note(f"turned IPv6 {'on' if on else 'off'} on {want.name} "
                      f"({', '.join(done)}): the plan has {'an' if on else 'no'} IPv6 overlay")

