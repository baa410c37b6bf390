"""What `vtep doctor` looks at, gathered once: the plan and this node, the underlay, the
live agent (owner.holder: whatever state dir it was given) and its status file, every
link of this namespace, the node's device and the entries the kernel holds on it, and
the state `vtep run` would want. Reading only; nothing here changes the host."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .. import host, owner, state
from ..errors import HostMismatch, VtepError
from ..linkfacts import LinkFacts, facts as link_facts
from ..plan import Node, Plan
from ..status import StatusFile


@dataclass
class Facts:
    plan: Plan
    node: Node
    source: str                        # "plan F" or "etcd URL/prefix"
    device: str
    state_dir: str
    under: host.Underlay | None = None
    under_error: str | None = None
    agent_pid: int | None = None       # the live agent holding the device's lock
    status: dict | None = None
    status_path: str = ""
    links: list[LinkFacts] = field(default_factory=list)
    want: state.NodeState | None = None
    realised: object | None = None     # nlmsg.Realised of the device, when it exists
    addresses: list[str] | None = None  # the device's addresses, "ip/plen", both families
    ipv6_off: bool | None = None       # net.ipv6.conf.DEVICE.disable_ipv6 (None: no IPv6)
    ipv6_conf: dict | None = None      # the device's IPv6 sysctls vtep sets (host.IPV6_ON)

    @property
    def dev(self) -> LinkFacts | None:
        return next((x for x in self.links if x.name == self.device), None)

    @property
    def mode(self) -> str:
        """kernel or userspace: the agent's, else the device's kind."""
        if self.status and self.status.get("mode") in ("kernel", "userspace"):
            return self.status["mode"]
        d = self.dev
        return "userspace" if d is not None and d.kind == "tun" else "kernel"

    def name_of(self, index: int | None) -> str:
        return next((x.name for x in self.links if x.index == index), f"if{index}")


def gather(plan: Plan, node: Node, source: str, device: str, state_dir: str) -> Facts:
    f = Facts(plan, node, source, device, state_dir)
    try:
        f.under = host.underlay_facts(node)
    except HostMismatch as e:
        f.under_error = str(e)
    f.agent_pid = owner.holder(device)
    sf = StatusFile(state_dir, node.name, device)
    f.status_path = sf.path
    st = sf.read()
    # a file left by a dead agent (kill -9) says nothing about the live one: it counts
    # only when its pid is the live agent's (0: an agent whose pid cannot be read)
    if st is not None and f.agent_pid is not None and st.get("pid") in (f.agent_pid, None) \
            or st is not None and f.agent_pid == 0:
        f.status = st
    from ..links import Links
    links = Links()
    try:
        f.links = [link_facts(m) for m in links.dump()]
    finally:
        links.close()
    if f.under is not None:
        mtu_plan = plan
        net = (f.status or {}).get("network") or {}
        if isinstance(net.get("mtu"), int) and net["mtu"] != state.overlay_mtu(plan,
                                                                             f.under.mtu):
            # the live agent's MTU outranks the plan's (`vtep run --mtu N|auto`)
            mtu_plan = dataclasses.replace(plan, mtu=net["mtu"])
        f.want = state.desired(mtu_plan, node.name, underlay_dev=f.under.dev,
                               underlay_mtu=f.under.mtu, device=device)
    dev = f.dev
    if dev is not None:
        from ..netlink import IPV4, Rtnl, families_of
        rt = Rtnl()
        try:
            f.realised = rt.read(dev.index, families_of(f.want.device) if f.want else IPV4)
        except VtepError:
            f.realised = None
        finally:
            rt.close()
        f.addresses, f.ipv6_off = device_addresses(dev.index), ipv6_off(device)
        f.ipv6_conf = ipv6_conf(device)
    return f


def device_addresses(index: int) -> list[str] | None:
    """The device's addresses of both families as "ip/plen" (None: unreadable)."""
    from ..links import Links
    links = Links()
    try:
        return [f"{a.get_attr('IFA_LOCAL') or a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                for a in links.ipr.addr("dump", index=index)]
    except OSError:
        return None
    finally:
        links.close()


def ipv6_off(device: str) -> bool | None:
    try:
        with open(f"/proc/sys/net/ipv6/conf/{device}/disable_ipv6") as fh:
            return fh.read().strip() == "1"
    except OSError:
        return None


def ipv6_conf(device: str) -> dict:
    """The device's IPv6 sysctls that vtep sets with an IPv6 overlay (host.IPV6_ON), as
    read; a missing one is left out."""
    out = {}
    for key, _want in host.IPV6_ON:
        try:
            with open(f"/proc/sys/net/ipv6/conf/{device}/{key}") as fh:
                out[key] = fh.read().strip()
        except OSError:
            pass
    return out
