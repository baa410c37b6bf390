"""The host: forwarding, reverse-path filtering, the underlay MTU, firewall rules that drop
the VXLAN port (nftables, and iptables' own view), and tx checksum offload on the vxlan
device of a host that NATs (the checksum bug of some kernels)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

from .. import wire
from .facts import Facts
from .finding import Finding, ok

FIREWALL_HOOKS = ("prerouting", "input")
DROPS = ("drop", "reject")


def sysctl(path: str) -> str | None:
    try:
        with open(f"/proc/sys/{path}") as f:
            return f.read().strip()
    except OSError:
        return None


def check(f: Facts) -> list[Finding]:
    return forwarding() + rp_filter(f) + underlay_mtu(f) + firewall(f) + offload(f)


def forwarding() -> list[Finding]:
    if sysctl("net/ipv4/ip_forward") == "0":
        return [Finding("host.forwarding", "error", "net.ipv4.ip_forward is 0",
                        "the node does not route between its pods' bridge and the VTEP: "
                        "pods on other nodes are unreachable",
                        "sysctl -w net.ipv4.ip_forward=1 (a running agent sets it each "
                        "pass)")]
    return [ok("host.forwarding", "net.ipv4.ip_forward is 1")]


def rp_filter(f: Facts) -> list[Finding]:
    """The kernel uses the larger of `all` and the device's value (1 strict, 2 loose)."""
    devs = [d for d in (f.under.dev if f.under else None, f.device, "br0") if d]
    all_ = int(sysctl("net/ipv4/conf/all/rp_filter") or 0)
    strict = []
    for d in dict.fromkeys(devs):
        v = sysctl(f"net/ipv4/conf/{d}/rp_filter")
        if v is not None and max(all_, int(v)) == 1:
            strict.append(d)
    if strict:
        return [Finding("host.rp-filter", "warning",
                        f"strict reverse-path filtering (rp_filter 1) on {', '.join(strict)}",
                        "a packet whose source the route back does not reach through the "
                        "same device is dropped silently: VXLAN from a multi-homed or "
                        "ECMP underlay, pod traffic after a route change",
                        " ; ".join(f"sysctl -w net.ipv4.conf.{d}.rp_filter=2" for d in strict)
                        + (" ; sysctl -w net.ipv4.conf.all.rp_filter=2" if all_ == 1 else ""))]
    return [ok("host.rp-filter", "no strict reverse-path filtering on the node's devices")]


def underlay_mtu(f: Facts) -> list[Finding]:
    if f.under is None:
        return []
    over = f.under.mtu - wire.overhead(f.plan.ipv6_underlay)
    if f.under.mtu < 1500:
        return [Finding("host.underlay-mtu", "info", f"underlay {f.under.dev} MTU "
                        f"{f.under.mtu}: the overlay carries at most {over}-byte packets",
                        "pods' MTU must be the overlay's; a narrower path still needs "
                        "`vtep mtu`", "")]
    return []


# --- firewall -------------------------------------------------------------------------------

def _port_matches(right, port: int):
    """True, False, or None (not understood) for an nft match's right-hand side."""
    if isinstance(right, int):
        return right == port
    if isinstance(right, dict):
        if "set" in right:
            items = right["set"]
            return any(_port_matches(x, port) for x in items)
        if "range" in right:
            lo, hi = right["range"]
            return lo <= port <= hi if isinstance(lo, int) and isinstance(hi, int) else None
    return None


def _rule_applies(exprs: list, port: int):
    """Does this rule match VXLAN to `port`? True, False, or None (a match we do not
    understand: the rule is not counted either way)."""
    applies = True
    for e in exprs:
        m = e.get("match") if isinstance(e, dict) else None
        if m is None:
            continue
        left, right, op = m.get("left"), m.get("right"), m.get("op")
        payload = left.get("payload") if isinstance(left, dict) else None
        meta = left.get("meta") if isinstance(left, dict) else None
        if payload and payload.get("field") == "dport" and \
                payload.get("protocol") in ("udp", "th"):
            hit = _port_matches(right, port)
            if hit is None:
                return None
            if (op in ("==", "in") and not hit) or (op == "!=" and hit):
                return False
        elif meta and meta.get("key") == "l4proto":
            if (right == "udp") != (op != "!="):
                return False
        else:
            return None
    return applies


def _verdict(exprs: list) -> str | None:
    for e in exprs:
        if isinstance(e, dict):
            for v in ("accept", "drop", "reject"):
                if v in e:
                    return v
    return None


def nft_findings(doc: dict, port: int) -> list[str]:
    """Lines naming each input-path chain that drops VXLAN to `port`."""
    chains, rules = {}, {}
    for item in doc.get("nftables", []):
        if "chain" in item:
            c = item["chain"]
            chains[(c["family"], c["table"], c["name"])] = c
        elif "rule" in item:
            r = item["rule"]
            rules.setdefault((r["family"], r["table"], r["chain"]), []).append(r)
    out = []
    for key, c in chains.items():
        if c.get("hook") not in FIREWALL_HOOKS or c.get("family") in ("arp", "bridge"):
            continue
        decided = None
        for r in rules.get(key, []):
            verdict = _verdict(r.get("expr", []))
            if verdict is None or _rule_applies(r.get("expr", []), port) is not True:
                continue
            decided = (verdict, r)
            break
        name = f"nft {c['family']} {c['table']} {c['name']}"
        if decided and decided[0] in DROPS:
            out.append(f"{name}: rule handle {decided[1].get('handle')} {decided[0]}s UDP "
                       f"{port}")
        elif decided is None and c.get("policy") == "drop":
            out.append(f"{name}: policy drop, and no rule accepts UDP {port}")
    return out


IPT_RULE = re.compile(r"^-A (INPUT|PREROUTING) (.*) -j (DROP|REJECT|ACCEPT)\b")


def iptables_findings(save: str, port: int) -> list[str]:
    """The same from `iptables-save` (rules iptables-nft and legacy tables hold)."""
    out, table, policy, decided = [], None, {}, {}
    for line in save.splitlines():
        if line.startswith("*"):
            table = line[1:]
        m = re.match(r"^:(INPUT|PREROUTING) (\w+)", line)
        if m:
            policy[(table, m.group(1))] = m.group(2)
        m = IPT_RULE.match(line)
        if not m or (table, m.group(1)) in decided:
            continue
        spec = m.group(2)
        words = spec.split()
        if "-p" in words and words[words.index("-p") + 1] != "udp":
            continue
        if any(w in words for w in ("-s", "-d", "-i", "-m")) and "--dport" not in words \
                and "--dports" not in words:
            continue   # matches something we do not weigh: not counted
        ports = None
        for flag in ("--dport", "--dports"):
            if flag in words:
                ports = words[words.index(flag) + 1]
        if ports is not None and not _ipt_port(ports, port):
            continue
        decided[(table, m.group(1))] = m.group(3)
        if m.group(3) in ("DROP", "REJECT"):
            out.append(f"iptables -t {table} {m.group(1)}: {line.strip()}")
    for (tbl, chain), pol in policy.items():
        if pol == "DROP" and (tbl, chain) not in decided:
            out.append(f"iptables -t {tbl} {chain}: policy DROP, and no rule accepts UDP "
                       f"{port}")
    return out


def _ipt_port(spec: str, port: int) -> bool:
    for part in spec.split(","):
        lo, _, hi = part.partition(":")
        try:
            if int(lo) <= port <= int(hi or lo):
                return True
        except ValueError:
            return False
    return False


def _run(argv: list[str]) -> str | None:
    if not shutil.which(argv[0]):
        return None
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def firewall(f: Facts) -> list[Finding]:
    port = f.plan.port
    lines = []
    text = _run(["nft", "-j", "list", "ruleset"])
    if text:
        try:
            lines += nft_findings(json.loads(text), port)
        except (ValueError, KeyError, TypeError):
            pass
    for tool in ("iptables-save", "ip6tables-save"):
        save = _run([tool])
        if save:
            lines += [x for x in iptables_findings(save, port) if x not in lines]
    if lines:
        return [Finding("host.firewall", "error", f"the firewall drops VXLAN (UDP {port}): "
                        + "; ".join(lines), "peers' packets never reach the VTEP",
                        f"accept UDP {port} from the peers' underlay addresses before these "
                        "rules")]
    return [ok("host.firewall", f"no input rule drops UDP {port}")]


# --- checksum offload -----------------------------------------------------------------------

NAT = re.compile(r'"(masquerade|snat|dnat)"|-j (MASQUERADE|SNAT|DNAT)\b')


def offload(f: Facts) -> list[Finding]:
    """Tx checksum offload on the vxlan device while this host NATs: some kernels then
    send NATed VXLAN packets with a bad outer UDP checksum, which peers drop until TCP
    retries (the 63-second stalls of flannel-io/flannel#1279 and
    kubernetes/kubernetes#88986, still a known limitation in flannel's troubleshooting
    guide). Without NAT the bug has nothing to act on."""
    if f.dev is None or f.mode != "kernel":
        return []
    k = _run(["ethtool", "-k", f.device]) or ""
    on = re.search(r"^tx-checksum-ip-generic: on", k, re.M) is not None
    nat = any(NAT.search(_run(argv) or "") for argv in
              (["nft", "-j", "list", "ruleset"], ["iptables-save", "-t", "nat"]))
    if on and nat:
        return [Finding("host.checksum-offload", "warning",
                        f"{f.device} has tx checksum offload on and this host NATs",
                        "some kernels corrupt the outer UDP checksum of NATed VXLAN "
                        "packets: connections through services stall for about 63 s",
                        f"ethtool -K {f.device} tx-checksum-ip-generic off")]
    return [ok("host.checksum-offload", f"{f.device} tx checksum offload "
               f"{'on' if on else 'off'}, {'NAT' if nat else 'no NAT'} on this host")]
