"""The plugin's own keys in a network config, and where the node's share of the overlay
comes from.

`read_conf` checks the keys (a typo is refused with code 2, naming the key and its
value, instead of being silently ignored); `node_net` then turns the config into a
NodeNet, the facts an attachment needs (node, its subnet and gateway per family, the
overlays, the one overlay MTU), from one of three places, as flannel's plugin reads
flanneld's subnet file:

- "plan": a plan file; the node is "node", or the one whose underlay address is on
  this host; the MTU is the plan's, or the underlay device's minus the encapsulation.
- "etcd": the cluster in etcd (the same records `vtep run --etcd` keeps); the node as
  above, from the live members.
- neither: the running agent's status file, `<stateDir>/<device>.<node>.json`, which
  `vtep run` rewrites after every pass; it also carries the MTU that `--mtu auto`
  found. A file whose agent is gone, or runs in another network namespace, is refused
  (code 11: start the agent, then retry).
"""
from __future__ import annotations

import glob
import ipaddress
import json
import os
from dataclasses import dataclass

from .. import host, owner, plan as planlib
from ..config import DEFAULT_DEVICE, DEFAULT_STATE_DIR
from ..status import netns_inode
from .spec import (INVALID_CONFIG, TRY_AGAIN_LATER, UNSUPPORTED_FIELD, CniError)

# Our keys and their types; every other key must be the protocol's (section 1).
OWN = {"plan": str, "etcd": str, "etcdPrefix": str, "etcdCACert": str, "etcdCert": str,
       "etcdKey": str, "node": str, "bridge": str, "stateDir": str, "device": str}
PROTOCOL = {"cniVersion", "cniVersions", "name", "type", "runtimeConfig", "args",
            "prevResult", "capabilities", "disableCheck", "disableGC", "dns", "ipMasq",
            "loadOnlyInlinedPlugins"}
DEFAULT_BRIDGE = "br0"


@dataclass(frozen=True)
class Conf:
    name: str
    plan: str | None = None
    etcd: str | None = None
    etcd_prefix: str = "/vtep"
    etcd_tls: tuple = (None, None, None)
    node: str | None = None
    bridge: str = DEFAULT_BRIDGE
    state_dir: str = DEFAULT_STATE_DIR
    device: str = DEFAULT_DEVICE
    dns: dict | None = None


@dataclass(frozen=True)
class NodeNet:
    node: planlib.Node
    mtu: int
    source: str          # where the facts came from, for messages
    overlay: str | None = "0.0.0.0/0"   # the whole IPv4 overlay: a second interface's route
    overlay6: str | None = None         # the whole IPv6 overlay, in a dual-stack plan

    @property
    def subnet(self):
        return self.node.subnet

    @property
    def gateway(self):
        return self.node.gateway

    @property
    def overlays(self) -> list[str]:
        """A second interface's routes: the overlay of each family the node has (the
        whole family's space when the source did not name it)."""
        return [(self.overlay or "0.0.0.0/0") if s.version == 4 else (self.overlay6 or "::/0")
                for s in self.node.subnets]


def read_conf(config: dict) -> Conf:
    """The config's keys, checked; never touches the host."""
    for k, v in config.items():
        if k in OWN:
            if not isinstance(v, OWN[k]) or not v:
                raise CniError(INVALID_CONFIG, f"network config: {k} must be a non-empty "
                                               f"string (got {json.dumps(v)[:60]})")
        elif k not in PROTOCOL and not k.startswith("cni.dev/"):
            raise CniError(UNSUPPORTED_FIELD, f"network config: unknown key {k!r} "
                           f"(value {json.dumps(v)[:60]}); vtep knows {', '.join(sorted(OWN))}")
    name = config.get("name")
    if not isinstance(name, str) or not name:
        raise CniError(INVALID_CONFIG, "network config: name is missing")
    if config.get("ipMasq"):
        raise CniError(UNSUPPORTED_FIELD, "network config: ipMasq true: vtep routes pod "
                       "addresses across the overlay without NAT; remove it or set it false")
    if config.get("type") != "vtep":
        raise CniError(INVALID_CONFIG, f"network config: type {config.get('type')!r}, "
                                       "expected \"vtep\"")
    node = config.get("node")
    if node is not None and (node in (".", "..") or any(c in node for c in "/*?[]\0")
                             or not node.isprintable()):
        raise CniError(INVALID_CONFIG, f"network config: node {node[:40]!r} is not a node name")
    if "plan" in config and "etcd" in config:
        raise CniError(INVALID_CONFIG, "network config: plan and etcd both given; name one "
                                       "(or neither, to read the running agent's status)")
    bridge = config.get("bridge", DEFAULT_BRIDGE)
    for key, dev in (("bridge", bridge), ("device", config.get("device", DEFAULT_DEVICE))):
        why = planlib.ifname_problem(dev)
        if why:
            raise CniError(INVALID_CONFIG, f"network config: {key} {dev!r}: {why}")
    dns = config.get("dns")
    if dns is not None and not isinstance(dns, dict):
        raise CniError(INVALID_CONFIG, "network config: dns must be an object")
    return Conf(name=name, plan=config.get("plan"), etcd=config.get("etcd"),
                etcd_prefix=config.get("etcdPrefix", "/vtep"),
                etcd_tls=(config.get("etcdCACert"), config.get("etcdCert"),
                          config.get("etcdKey")),
                node=config.get("node"), bridge=bridge,
                state_dir=config.get("stateDir", DEFAULT_STATE_DIR),
                device=config.get("device", DEFAULT_DEVICE), dns=dns or None)


def node_net(conf: Conf) -> NodeNet:
    """This node's subnet, gateway and overlay MTU. vtep's own errors propagate (the
    entry point maps them); only the status file's problems are CniErrors here."""
    if conf.plan:
        return _from_plan(planlib.load(conf.plan), conf, f"plan {conf.plan}")
    if conf.etcd:
        return _from_plan(_etcd_plan(conf), conf, f"etcd {conf.etcd}{conf.etcd_prefix}")
    return from_status(conf)


def _from_plan(plan: planlib.Plan, conf: Conf, where: str) -> NodeNet:
    node = host.select_node(plan, conf.node)
    _, underlay_mtu = host.underlay(node)
    return NodeNet(node, planlib.overlay_mtu(plan, underlay_mtu), where,
                   plan.overlay and str(plan.overlay), plan.overlay6 and str(plan.overlay6))


def _etcd_plan(conf: Conf) -> planlib.Plan:
    from ..etcd import Client, TLSFiles
    from ..etcd.membership import current_plan
    from ..etcd.model import Layout
    layout = Layout(conf.etcd_prefix)
    with Client(conf.etcd, tls=TLSFiles(*conf.etcd_tls)) as client:
        return current_plan(client, layout, f"etcd {conf.etcd}{conf.etcd_prefix}")


def status_files(conf: Conf) -> list[str]:
    if conf.node:
        path = os.path.join(conf.state_dir, f"{conf.device}.{conf.node}.json")
        return [path] if os.path.exists(path) else []
    found = []
    for path in sorted(glob.glob(os.path.join(glob.escape(conf.state_dir),
                                               f"{glob.escape(conf.device)}.*.json"))):
        try:   # "vxlan0.*" also matches device vxlan0.100's files: the file says whose
            with open(path) as f:
                if json.load(f).get("device", conf.device) != conf.device:
                    continue
        except (OSError, ValueError, AttributeError):
            pass   # unreadable: from_status says so
        found.append(path)
    return found


def from_status(conf: Conf) -> NodeNet:
    """The facts the running agent published (vtep.daemon writes "network")."""
    found = status_files(conf)
    which = f"{conf.device}.{conf.node or '*'}.json in {conf.state_dir}"
    if not found:
        raise CniError(TRY_AGAIN_LATER, f"no status file {which}: is `vtep run` running on "
                       "this node? (or name a \"plan\" or \"etcd\" in the network config)")
    if len(found) > 1:
        names = ", ".join(os.path.basename(f) for f in found)
        raise CniError(INVALID_CONFIG, f"several agents' status files ({names}): name the "
                                       "node with \"node\" in the network config")
    path = found[0]
    try:
        with open(path) as f:
            doc = json.load(f)
        net = doc["network"]
        # either family may be absent (an IPv4-only or IPv6-only overlay), not both
        subnet = ipaddress.IPv4Network(net["subnet"]) if net.get("subnet") else None
        subnet6 = ipaddress.IPv6Network(net["subnet6"]) if net.get("subnet6") else None
        if subnet is None and subnet6 is None:
            raise KeyError("subnet")
        mtu = int(net["mtu"])
        pid, ns = int(doc["pid"]), doc.get("netns")
        node = planlib.Node(str(doc["node"]), ipaddress.ip_address(net["underlay_ip"]),
                            subnet, "", subnet6=subnet6)
    except FileNotFoundError:
        raise CniError(TRY_AGAIN_LATER, f"{path}: gone while read (the agent stopped)")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CniError(TRY_AGAIN_LATER, f"{path}: no network facts in it ({type(e).__name__}: "
                       f"{e}); an agent older than the plugin? restart `vtep run`")
    # Liveness by the agent's device claim (vtep.owner: an abstract socket of this network
    # namespace), not by the pid in the file: an agent in a container of its own (a
    # DaemonSet without hostPID) wrote its pid as its PID namespace numbers it, often 1,
    # which names some other process here.
    if owner.holder(conf.device) is None:
        raise CniError(TRY_AGAIN_LATER, f"{path}: no agent manages {conf.device} in this "
                                        f"network namespace now (the file names pid {pid}); "
                                        "start `vtep run`, then retry")
    if ns is not None and ns != netns_inode():
        raise CniError(INVALID_CONFIG, f"{path}: written by an agent in another network "
                                       "namespace; run the plugin in the node's namespace")
    return NodeNet(node, mtu, f"status {path}", net.get("overlay"), net.get("overlay6"))
