"""`vtep doctor --probe`: the data path itself, per peer.

For each peer: the underlay path MTU (vtep.pmtu, DF probes; an ICMP "fragmentation
needed" names the hop at the bottleneck); then pings of the peer's VTEP address through
the tunnel, one small and one of the overlay MTU with DF, while tcpdump captures the
peer's VXLAN on the underlay device; vxinspect judges the capture; where this node has
pods, the same pings from one of them to the peer's pod gateway (pod to pod) (VNI, flags, outer
and inner checksums, DF, sizes, the plan). A failing peer is named with the hop that
fails: the underlay path, our own requests never leaving, the peer never answering,
only full-size packets lost, or a capture vxinspect finds fault with. Bounded: two
pings of each size, 2 s each, a capture of at most 64 packets.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time

from .. import wire
from ..errors import VtepError
from ..inet import IPV4_HLEN, ICMP_HLEN
from .facts import Facts
from .finding import Finding, ok
from .hostcheck import output

PING_WAIT = 2          # s per reply
CAPTURE_LIMIT = 64     # packets


def check(f: Facts) -> list[Finding]:
    if f.under is None or f.want is None:
        return [Finding("probe.skipped", "warning", "no probe: the node's underlay is not "
                        "here", "", "")]
    if f.dev is None:
        return [Finding("probe.skipped", "warning", f"no probe: {f.device} does not exist",
                        "", "")]
    out = []
    from ..pmtu import probe_each
    peers = [(p.name, str(p.underlay_ip)) for p in f.plan.peers(f.node.name)]
    if not peers:
        return [ok("probe.peers", "no peers to probe")]
    need = f.want.device.mtu + wire.overhead(f.plan.ipv6_underlay)
    try:
        found, lost = probe_each(str(f.node.underlay_ip), peers, f.under.mtu, timeout=0.5)
    except VtepError as e:   # e.g. EPERM: an output rule drops our ICMP probes
        return [Finding("probe.skipped", "warning", f"no path MTU probe: {e}", "", "")]
    paths = {p.peer: p for p in found}
    down = {u.peer: u for u in lost}
    pod = _a_pod(f)
    for peer in f.plan.peers(f.node.name):
        try:
            found = _peer(f, peer, paths.get(peer.name), down.get(peer.name), need)
        except (OSError, subprocess.SubprocessError) as e:   # ping or tcpdump missing, hung
            out.append(Finding("probe.skipped", "warning", f"peer {peer.name}: the probe "
                               f"could not run: {e}", "", "install iputils-ping and tcpdump"))
            continue
        out += found
        tunnel_ok = any(x.id == "probe.tunnel" and x.severity == "ok" for x in found)
        if pod is not None and tunnel_ok:
            out += _pod_leg(f, peer, pod)
    return out


def _a_pod(f: Facts) -> tuple[str, dict] | None:
    """One of this node's pods (`vtep pod`, `vtep-cni`) whose namespace is here."""
    from ..pods import PodStore
    store = PodStore(f.state_dir, f.node.name)
    try:
        with store.locked(create=False):
            pods = dict(store.pods)
    except Exception:   # an unreadable allocation file: no pod leg, the rest still runs
        return None
    for name, rec in sorted(pods.items()):
        if os.path.exists(rec.get("netns", "")):
            return name, rec
    return None


def _pod_leg(f: Facts, peer, pod: tuple[str, dict]) -> list[Finding]:
    """Pod to pod: from a pod of this node to the peer's pod gateway (its bridge, the
    first address of its pods' subnet), small and full size with DF: the way pod
    traffic goes (the pod's veth, the bridge, forwarding, the VTEP, the peer's bridge)."""
    name, rec = pod
    target = str(peer.gateway)
    big = _full(f)
    small = _ping(target, 56, None, rec["netns"])
    full = _ping(target, big, None, rec["netns"]) if small else False
    if small and full:
        return [ok("probe.pod", f"peer {peer.name}: pod {name} ({rec['ip']}) reaches "
                                f"{target}, {peer.name}'s pod gateway, at 84 and {big + 28} "
                                "bytes")]
    what = "no reply" if not small else f"no reply at {big + 28} bytes (84 bytes pass)"
    # a warning: a peer with no pods yet has no pod bridge to answer
    return [Finding("probe.pod", "warning",
                    f"peer {peer.name}: pod {name} ({rec['ip']}) gets {what} from {target}, "
                    f"{peer.name}'s pod gateway, while the VTEPs reach each other",
                    "the pod leg fails: this node's forwarding or rp_filter, the pod's route "
                    f"or MTU, or {peer.name} has no pod bridge", "see this node's host "
                    f"findings; `vtep doctor` on {peer.name}")]


def _peer(f: Facts, peer, path, unreachable, need: int) -> list[Finding]:
    name, addr = peer.name, str(peer.underlay_ip)
    if unreachable is not None:
        return [Finding("probe.underlay", "error",
                        f"peer {name}: its underlay address {addr} does not answer: "
                        f"{unreachable.why}", "nothing reaches that node",
                        f"check the route to {addr} (`ip route get {addr}`) and the links "
                        "on the way")]
    out = []
    if path.mtu < need:
        hop = f" (hop {path.hop} says its MTU is {path.mtu})" if path.hop else \
            " (no hop said why: ICMP is filtered on the way, a black hole)"
        out.append(Finding("probe.path-mtu", "error",
                           f"peer {name}: the underlay path to {addr} carries {path.mtu}-byte "
                           f"packets, the overlay needs {need}{hop}",
                           "full-size pod packets are dropped (DF) or fragmented: large "
                           "transfers hang", f"vtep run --mtu auto (or mtu = "
                           f"{path.mtu - (need - f.want.device.mtu)} in the plan)"))
    else:
        out.append(ok("probe.path-mtu", f"peer {name}: path MTU {path.mtu} >= {need}"))
    out += _tunnel(f, peer)
    return out


def _full(f: Facts) -> int:
    """The largest ICMP payload a full-size packet through the device carries: the
    device's MTU as it is (the agent's --mtu may differ from the plan's)."""
    mtu = f.dev.mtu if f.dev is not None and f.dev.mtu else f.want.device.mtu
    return mtu - IPV4_HLEN - ICMP_HLEN


def _tunnel(f: Facts, peer) -> list[Finding]:
    name, target = peer.name, str(peer.vtep_ip)
    big = _full(f)
    with tempfile.TemporaryDirectory(prefix="vtep-doctor-") as tmp:
        pcap = os.path.join(tmp, "probe.pcap")
        cap, no_capture = _capture(f.under.dev, f.plan.port, str(peer.underlay_ip), pcap)
        try:
            small_ok = _ping(target, 56, str(f.node.vtep_ip))
            big_ok = _ping(target, big, str(f.node.vtep_ip)) if small_ok else False
        finally:
            _stop(cap)
        report = _judge(f, pcap)
    sent, back = _directions(report, str(f.node.underlay_ip), str(peer.underlay_ip))
    out = []
    if no_capture:
        out.append(Finding("probe.capture", "info", f"peer {name}: no capture ({no_capture})"
                           ": the failing hop cannot be named", "", "install tcpdump"))
    if not small_ok and no_capture:
        out.append(Finding("probe.tunnel", "error", f"peer {name}: no reply from {target} "
                           "through the tunnel", "pods here cannot reach pods there",
                           f"run `vtep doctor` here and on {name}"))
    elif not small_ok:
        if not sent:
            hop = (f"this node sent nothing towards {peer.underlay_ip}: its fdb, neighbour "
                   f"or route entry for {name} is missing or wrong")
            fix = "see the drift findings; `vtep run --once`"
        elif not back:
            hop = (f"requests left for {peer.underlay_ip} and nothing came back: {name}'s "
                   "agent, device, port or firewall")
            fix = f"run `vtep doctor` on {name}"
        else:
            hop = (f"VXLAN from {name} arrived on {f.under.dev} but the ping got no reply: "
                   "dropped on this node (see host.firewall, host.rp-filter) or a wrong "
                   "inner packet")
            fix = "see this node's other findings"
        out.append(Finding("probe.tunnel", "error", f"peer {name}: no reply from {target} "
                           f"through the tunnel; {hop}", "pods here cannot reach pods there",
                           fix))
    elif not big_ok:
        out.append(Finding("probe.tunnel-mtu", "error",
                           f"peer {name}: {big + 28}-byte packets with DF get no reply "
                           "through the tunnel (small ones do)", "an MTU black hole: large "
                           "transfers hang", "vtep run --mtu auto"))
    else:
        out.append(ok("probe.tunnel", f"peer {name}: {target} answers through the tunnel "
                                      f"at 84 and {big + 28} bytes"))
    if report is not None and not report.ok:
        fired = ", ".join(f"{cid} ({c['count']})" for cid, c in sorted(report.checks.items())
                          if c["count"] and c["severity"] == "error")
        out.append(Finding("probe.capture", "error", f"peer {name}: vxinspect finds in the "
                           f"probe's VXLAN: {fired or (report.error or {}).get('message')}",
                           "peers drop what fails these checks", "see `vxinspect` on a "
                           "capture of the underlay"))
    elif report is not None and report.vxlan_packets:
        out.append(ok("probe.capture", f"peer {name}: {report.vxlan_packets} VXLAN packets "
                                       "captured, vxinspect finds no error"))
    return out


def _capture(dev: str, port: int, peer: str,
             path: str) -> tuple[subprocess.Popen | None, str | None]:
    """tcpdump on `dev` (not promiscuous: -p) for the peer's VXLAN; (process, None) once
    it listens, or (None, why not)."""
    try:
        # --immediate-mode: without it packets wait in the ring for a block timeout (1 s)
        # and a SIGINT before it loses them
        p = subprocess.Popen(["tcpdump", "-p", "-i", dev, "-n", "-U", "--immediate-mode", "-c",
                              str(CAPTURE_LIMIT),
                              "-w", path, f"udp port {port} and host {peer}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    except OSError as e:
        return None, f"tcpdump: {e.strerror}"
    deadline = time.monotonic() + 5
    line = ""
    while time.monotonic() < deadline and "listening on" not in line:
        line = p.stderr.readline()
        if not line and p.poll() is not None:
            return None, f"tcpdump exited: {line.strip() or p.returncode}"
    return p, None


def _stop(p: subprocess.Popen | None) -> None:
    if p is None:
        return
    time.sleep(0.2)   # the last replies reach the capture
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def _ping(dst: str, size: int, src: str | None, netns: str | None = None) -> bool:
    argv = ["ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", str(PING_WAIT), "-M", "do",
            "-s", str(size)] + (["-I", src] if src else []) + [dst]
    if netns:
        argv = ["nsenter", f"--net={netns}"] + argv
    r = subprocess.run(argv, capture_output=True, text=True, timeout=2 * PING_WAIT + 5)
    return r.returncode == 0


def _judge(f: Facts, pcap: str):
    """vxinspect's report on the capture. Checksums are judged only when the underlay
    device computes them before the capture sees the packet: with tx checksum offload on
    (every real NIC, virtio), this node's own packets are captured before the device
    fills their outer UDP checksum, and would read as wrong."""
    if not os.path.exists(pcap) or os.path.getsize(pcap) < 24:
        return None
    from vxinspect.analyze import Options, inspect_file
    k = output(["ethtool", "-k", f.under.dev])
    judge = k is not None and re.search(r"^tx-checksumming: off", k, re.M) is not None
    opts = Options(vnis=frozenset({f.plan.vni}), underlay_mtu=f.under.mtu,
                   mtu=f.dev.mtu if f.dev and f.dev.mtu else f.want.device.mtu,
                   plan=f.plan, checksums=judge)
    return inspect_file(pcap, opts)




def _directions(report, me: str, peer: str) -> tuple[int, int]:
    """(VXLAN packets from this node to the peer, from the peer to this node)."""
    if report is None:
        return 0, 0
    sent = sum(x["packets"] for x in report.flows if x["src"] == me and x["dst"] == peer)
    back = sum(x["packets"] for x in report.flows if x["src"] == peer and x["dst"] == me)
    return sent, back
