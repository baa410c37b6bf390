"""What each CNI command does to the node: attachments made with vtep.pods' connectivity
rule (a veth from the container to the node bridge, an address from the node's subnet,
the gateway, the overlay MTU) and recorded in the same allocation file `vtep pod add`
uses, so the two never hand out one address twice. In a dual-stack plan every step
covers both families: an address of each (allocated, reserved and released together),
a route of each, both in the result (IPv4 first) and both checked by CHECK.

An attachment is (CNI_CONTAINERID, CNI_IFNAME); its record's key is "ID/IFNAME" (a
`vtep pod` name never holds '/') and it remembers the network's name, for GC. ADD and
DEL hold the node's allocation lock from the first read to the last write, so parallel
ADDs (the runtime starts plugins concurrently) see each other's addresses. DEL needs
neither the plan nor the agent: it finds the record by its key under stateDir, so a
node whose agent is down still releases its addresses.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from pathlib import Path

from .. import host, pods
from ..errors import VtepError
from ..rtlink import RtError, RtLink
from . import netconf
from .spec import (BAD_ENVIRONMENT, CHECK_FAILED, IO_FAILURE, EXHAUSTED, INVALID_CONFIG, NOT_AVAILABLE, SETUP_FAILED,
                   TRY_AGAIN_LATER, UNKNOWN_CONTAINER, CniError, Request, render_result)


def run(req: Request) -> dict | None:
    """The command's answer (None: print nothing)."""
    from .spec import version_result
    if req.command == "VERSION":
        return version_result(req.version)
    conf = netconf.read_conf(req.config)
    try:
        return COMMANDS[req.command](req, conf)
    except CniError:
        raise
    except pods.SubnetExhausted as e:
        raise CniError(EXHAUSTED, str(e))
    except pods.PodError as e:
        raise CniError(SETUP_FAILED, str(e))
    except VtepError as e:
        raise translate(e)
    except RtError as e:   # a kernel refusal outside an attachment (DEL's, GC's)
        raise CniError(SETUP_FAILED, _why(e))
    except OSError as e:
        raise CniError(IO_FAILURE, f"{e.filename or 'I/O'}: {e.strerror or e}")


def translate(e: VtepError) -> CniError:
    """vtep's own errors as the spec's: an unreachable store is worth a retry; a bad
    plan, node, option or host is an invalid config for this node."""
    from ..etcd import EtcdUnavailable
    return CniError(TRY_AGAIN_LATER if isinstance(e, EtcdUnavailable) else INVALID_CONFIG,
                    str(e))


# --- ADD ------------------------------------------------------------------------------------

def requested_ips(req: Request) -> dict[int, str]:
    """Static addresses, {version: address}: runtimeConfig "ips" (the `ips` capability,
    podman --ip with netavark-style configs) or CNI_ARGS IP= (host-local's convention,
    what podman's CNI backend passes; comma-separated). At most one per family; a
    prefix given with one is ignored (the address gets the node subnet's)."""
    texts = []
    rc = req.config.get("runtimeConfig")
    if isinstance(rc, dict) and isinstance(rc.get("ips"), list):
        texts += [str(x) for x in rc["ips"]]
    if req.args.get("IP"):
        texts += req.args["IP"].split(",")
    by_family: dict[int, set[str]] = {}
    for text in texts:
        try:
            ip = pods.address(text.split("/")[0].strip())
        except pods.Zoned as e:
            raise CniError(INVALID_CONFIG, f"static address {e}") from None
        except ValueError:
            raise CniError(INVALID_CONFIG, f"static address {text[:60]!r} is not an IP "
                                           "address") from None
        by_family.setdefault(ip.version, set()).add(str(ip))
    for version, got in sorted(by_family.items()):
        if len(got) > 1:
            raise CniError(INVALID_CONFIG, f"several static IPv{version} addresses asked for "
                           f"({', '.join(sorted(got))}); vtep gives one per family")
    return {v: got.pop() for v, got in sorted(by_family.items())}


def routes_for(req: Request, net: netconf.NodeNet) -> list[str]:
    """The default route of each family for the container's first interface (eth0); a
    second interface of a multi-network container (Multus' net1, ...) gets the
    overlays' routes only, and the default routes stay with whoever owns eth0."""
    return pods.default_routes(net.node) if req.ifname == pods.POD_IF else net.overlays


def _gateway(net: netconf.NodeNet, cidr: str) -> str:
    """The gateway of the family of `cidr` (a route or an address)."""
    return pods.gateway_of(net.node, ipaddress.ip_interface(cidr).version)


def _cidrs(net: netconf.NodeNet, ips: list[str]) -> list[str]:
    plens = {s.version: s.prefixlen for s in net.node.subnets}
    return [f"{ip}/{plens.get(ipaddress.ip_address(ip).version, '?')}" for ip in ips]


def add(req: Request, conf: netconf.Conf) -> dict:
    host.require_net_admin("vtep-cni ADD")
    net = netconf.node_net(conf)
    if not os.path.lexists(req.netns):
        raise CniError(UNKNOWN_CONTAINER, f"CNI_NETNS {req.netns}: no such namespace")
    why = pods.netns_problem(req.netns)
    if why:
        raise CniError(BAD_ENVIRONMENT, f"CNI_NETNS {req.netns}: {why}")
    asked = requested_ips(req)
    for version, want in asked.items():
        if (net.subnet if version == 4 else net.node.subnet6) is None:
            raise CniError(INVALID_CONFIG, f"static address {want}: node {net.node.name} "
                                           f"has no IPv{version} subnet ({net.source})")
    routes = routes_for(req, net)
    pods.check_mtu(net.node, net.mtu)
    store = pods.PodStore(conf.state_dir, net.node.name)
    with store.locked():
        old = store.pods.get(req.key)
        have = pods.record_ips(old) if old else []
        # every check before any change: a refused ADD touches nothing
        for version, want in asked.items():
            mine = [a for a in have if ipaddress.ip_address(a).version == version]
            if mine and mine[0] != want:
                raise CniError(INVALID_CONFIG, f"{req.key} already has {mine[0]}, not {want}; "
                                               "DEL it first")
        # both families or neither: allocate_all records nothing, reserve() writes both
        ips = pods.allocate_all(net.node, store.taken(), asked, req.key, have)
        new = pods.record(net.node, ips, pods.veth_name(req.key), req.netns, False,
                          conf.bridge, cni={"network": conf.name, "container": req.container,
                                            "ifname": req.ifname})
        moved = old is not None and old["netns"] != req.netns
        # The reservation first: a crash (kill -9, a runtime's timeout) from here on
        # leaves a record that DEL and GC release, never an address in use that the
        # file does not hold, which the next ADD would hand out again.
        pods.reserve(store, req.key, new)
        try:
            if moved:   # re-added in a new namespace without a DEL: the old pair goes
                pods.remove_veth(old["veth"])
            made = pods.attach(net.node, req.netns, new["veth"], ips, net.mtu, conf.bridge,
                               req.ifname, routes)
        except BaseException as e:
            if old is None or moved:   # nothing half-made: undo what this call made
                pods.quietly(pods.remove_veth, new["veth"])
            pods.unreserve(store, req.key, None if moved else old)
            if isinstance(e, VtepError):
                raise
            if isinstance(e, Exception):
                raise CniError(SETUP_FAILED, f"{req.key} in {req.netns}: {_why(e)}") from None
            raise
    interfaces = [{"name": conf.bridge, "mac": made.bridge_mac},
                  {"name": new["veth"], "mac": made.veth_mac},
                  {"name": req.ifname, "mac": made.pod.mac, "mtu": made.pod.mtu,
                   "sandbox": req.netns}]
    # one entry per family, IPv4 first; 0.3.x/0.4.0 tag each with its "version" (render)
    out_ips = [{"address": c, "gateway": _gateway(net, c)} for c in _cidrs(net, ips)]
    out_routes = [{"dst": r, "gw": _gateway(net, r)} for r in routes]
    return _merge(req, interfaces, out_ips, out_routes, conf.dns)


def _details(e: Exception) -> str:
    return e.details if isinstance(e, CniError) else str(e)


def _why(e: Exception) -> str:
    if isinstance(e, RtError):
        return e.strerror   # names the step: "creating veth ... (peer eth0): File exists"
    return str(e) or type(e).__name__


def _merge(req, interfaces, ips, routes, dns) -> dict:
    """Our part after what earlier plugins of a chain made (section 5: a prevResult is
    passed on, with this plugin's changes added); ips point into the joint list."""
    prev = req.config.get("prevResult")
    prev = prev if isinstance(prev, dict) else {}
    before = list(prev.get("interfaces") or [])
    pod_index = len(before) + 2
    ips = [dict(ip, interface=pod_index) for ip in ips]
    old_ips = [{k: v for k, v in ip.items() if k != "version"} for ip in prev.get("ips") or []]
    return render_result(req.version, before + interfaces, old_ips + ips,
                         list(prev.get("routes") or []) + routes, dns or prev.get("dns"))


# --- DEL and GC -----------------------------------------------------------------------------

def _stores(conf: netconf.Conf):
    """The allocation files this config may have written: the named node's, or all."""
    base = Path(conf.state_dir)
    pattern = f"pods-{conf.node}.json" if conf.node else "pods-*.json"
    for path in sorted(base.glob(pattern)):
        try:
            node = json.loads(path.read_text())["node"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        yield pods.PodStore(conf.state_dir, node)


def delete(req: Request, conf: netconf.Conf) -> None:
    """Release the attachment; success when it, its veth or its namespace is gone."""
    host.require_net_admin("vtep-cni DEL")
    removed = False
    for store in _stores(conf):
        with store.locked(create=False):
            rec = store.pods.pop(req.key, None)
            if rec is None:
                continue
            pods.remove_veth(rec["veth"])
            store.save()
            removed = True
    if not removed:   # a crashed ADD may have left the pair without a record
        pods.remove_veth(pods.veth_name(req.key))
    return None


def gc(req: Request, conf: netconf.Conf) -> None:
    """Release this network's attachments that the runtime no longer lists (1.1.0)."""
    host.require_net_admin("vtep-cni GC")
    valid = req.config.get("cni.dev/valid-attachments", [])
    if not isinstance(valid, list) or not all(isinstance(v, dict) for v in valid):
        raise CniError(INVALID_CONFIG, "cni.dev/valid-attachments must be a list of objects")
    keep = {f"{v.get('containerID')}/{v.get('ifname')}" for v in valid}
    # This node's allocations only: nodes that share a stateDir (namespaces of one host)
    # each have their own file, and another node's attachments are not this runtime's.
    try:
        node = conf.node or netconf.node_net(conf).node.name
    except (CniError, VtepError) as e:
        raise CniError(INVALID_CONFIG, f"GC needs this node's name (\"node\" in the config, "
                                       f"or a source that finds it): {_details(e)}")
    failed = []
    for store in _stores(dataclasses.replace(conf, node=node)):
        with store.locked(create=False):
            stale = [k for k, r in store.pods.items()
                     if (r.get("cni") or {}).get("network") == conf.name and k not in keep]
            for k in stale:
                try:
                    pods.remove_veth(store.pods[k]["veth"])
                except Exception as e:   # section 2: carry on, report at the end
                    failed.append(f"{k}: {_why(e)}")
                    continue
                del store.pods[k]
            if stale:
                store.save()
    if failed:
        raise CniError(SETUP_FAILED, "GC could not release " + "; ".join(failed))
    return None


# --- CHECK and STATUS -----------------------------------------------------------------------

def check(req: Request, conf: netconf.Conf) -> None:
    """Every resource ADD made, as ADD made it: the record, the host's veth on the
    bridge, the address, the MTU and the default route in the container."""
    prev = req.config.get("prevResult")
    if not isinstance(prev, dict):
        raise CniError(INVALID_CONFIG, "CHECK needs prevResult, the result of the ADD")
    net = netconf.node_net(conf)
    store = pods.PodStore(conf.state_dir, net.node.name)
    with store.locked(create=False):
        rec = store.pods.get(req.key)
    if rec is None:
        raise CniError(CHECK_FAILED, f"{req.key}: no address is allocated to it on node "
                                     f"{net.node.name} (never added, or released)")
    cidrs = _cidrs(net, pods.record_ips(rec))
    listed = {_interface_text(ip.get("address")) for ip in prev.get("ips") or []
              if isinstance(ip, dict)}
    problems = []
    for cidr in cidrs:
        if cidr not in listed:
            problems.append(f"prevResult lists "
                            f"{', '.join(sorted(map(str, listed))) or 'no address'}"
                            f", the allocation is {cidr}")
    held = {ipaddress.ip_interface(c).version for c in cidrs}
    for s in net.node.subnets:
        if s.version not in held:   # added before the plan gained this family
            problems.append(f"no IPv{s.version} address is allocated to it (the node has "
                            f"{s}); DEL and ADD it again")
    problems += _host_problems(rec, conf.bridge)
    if not os.path.lexists(req.netns):
        problems.append(f"namespace {req.netns} is gone")
    else:
        try:
            with RtLink(req.netns) as there:
                pod = pods.pod_link(there, req.ifname)
        except OSError as e:   # gone meanwhile, or not a network namespace
            problems.append(f"namespace {req.netns}: {e.strerror or e}")
        else:
            problems += _pod_problems(req, net, prev, cidrs, pod)
    if problems:
        raise CniError(CHECK_FAILED, f"{req.key}: " + "; ".join(problems))
    return None


def _interface_text(text) -> str:
    """An address/prefix as we write it (RFC 5952's compressed IPv6), so that a runtime
    that stored prevResult in another spelling ("fd00:172:2:0:0:0:0:2/64", upper case)
    is not told its address is missing; anything unreadable is kept as it was."""
    try:
        return str(ipaddress.ip_interface(str(text)))
    except ValueError:
        return str(text)


def _pod_problems(req: Request, net, prev: dict, cidrs: list[str],
                  pod: dict | None) -> list[str]:
    problems = []
    if pod is None:
        problems.append(f"{req.ifname} is missing in {req.netns}")
    else:
            for cidr in cidrs:
                if cidr not in pod["addresses"]:
                    problems.append(f"address {cidr} missing on {req.ifname}")
            if pod["mtu"] != net.mtu:
                problems.append(f"MTU {pod['mtu']} on {req.ifname}, expected {net.mtu}")
            if not pod["up"]:
                problems.append(f"{req.ifname} is down")
            said = [i.get("mac") for i in prev.get("interfaces") or []
                    if i.get("name") == req.ifname and i.get("sandbox") == req.netns]
            if said and said[0] and said[0] != pod["mac"]:   # remade since the ADD
                problems.append(f"{req.ifname} has MAC {pod['mac']}, prevResult {said[0]}")
            for route in routes_for(req, net):
                gw = _gateway(net, route)
                if gw not in pod["routes"].get(route, []):
                    problems.append(f"no default route via {gw}" if route in
                                    (pods.DEFAULT_ROUTE, pods.DEFAULT_ROUTE6)
                                    else f"no route {route} via {gw}")
    return problems


def _host_problems(rec: dict, bridge: str) -> list[str]:
    with RtLink() as here:
        br, link = here.link(bridge), here.link(rec["veth"])
    if link is None:
        return [f"host veth {rec['veth']} is missing"]
    out = []
    if br is None or link.master != br.index:
        out.append(f"host veth {rec['veth']} is not a port of {bridge}")
    if not link.up:
        out.append(f"host veth {rec['veth']} is down")
    return out


def status(req: Request, conf: netconf.Conf) -> None:
    """Ready when the node's facts are known and each of its subnets (both families in
    a dual-stack plan: an ADD needs an address of each) has a free address."""
    try:
        net = netconf.node_net(conf)
    except CniError as e:
        raise CniError(NOT_AVAILABLE, e.details)
    except VtepError as e:
        raise CniError(NOT_AVAILABLE, str(e))
    store = pods.PodStore(conf.state_dir, net.node.name)
    with store.locked(create=False):
        taken = store.taken()
    try:
        for s in net.node.subnets:
            pods.allocate(net.node, taken, None, "?", s.version)
    except pods.SubnetExhausted as e:
        raise CniError(NOT_AVAILABLE, str(e))
    return None


COMMANDS = {"ADD": add, "DEL": delete, "CHECK": check, "STATUS": status, "GC": gc}
