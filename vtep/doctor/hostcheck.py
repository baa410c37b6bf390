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
    return forwarding(f) + rp_filter(f) + underlay_mtu(f) + firewall(f) + offload(f)


def forwarding(f: Facts) -> list[Finding]:
    """Forwarding in each family the overlay carries: the node routes its pods' packets
    between the bridge and the VTEP, IPv6 ones too with overlay6."""
    wanted = [("net/ipv4/ip_forward", "net.ipv4.ip_forward")] if f.plan.overlay else []
    if f.plan.overlay6 is not None:
        wanted.append(("net/ipv6/conf/all/forwarding", "net.ipv6.conf.all.forwarding"))
    off = [name for path, name in wanted if sysctl(path) == "0"]
    if off:
        return [Finding("host.forwarding", "error", " and ".join(f"{n} is 0" for n in off),
                        "the node does not route between its pods' bridge and the VTEP: "
                        "pods on other nodes are unreachable"
                        + (" over IPv6" if off == ["net.ipv6.conf.all.forwarding"] else ""),
                        " ".join(f"sysctl -w {n}=1" for n in off)
                        + " (a running agent sets it each pass)")]
    return [ok("host.forwarding", "; ".join(f"{name} is 1" for _, name in wanted))]


def rp_filter(f: Facts) -> list[Finding]:
    """The kernel uses the larger of `all` and the device's value (1 strict, 2 loose).
    IPv4's rp_filter does not act on an IPv6 underlay's packets: then only the VTEP and
    the bridge (the pods' IPv4 traffic) count."""
    under = f.under.dev if f.under and not f.plan.ipv6_underlay else None
    devs = [d for d in (under, f.device, "br0") if d]
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
                        " ; ".join(f"sysctl -w net.ipv4.conf.{d.replace('.', '/')}"
                                   ".rp_filter=2" for d in strict)
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
#
# The readers decide only what they can be sure of. A rule is weighed when every match in
# it is one they understand (the UDP destination port by ==, !=, a set or a range; the L4
# protocol); a rule with any other condition, a jump or goto to another chain, or a
# statement they do not know makes everything after it uncertain: a drop seen after one
# is a warning ("may drop"), not an error, and so is a drop policy.

HARMLESS = {"counter", "log", "comment", "notrack"}
VERDICTS = ("accept", "drop", "reject", "jump", "goto", "return", "continue", "queue")


def _port_matches(right, port: int):
    """True, False, or None (not understood) for an nft match's right-hand side."""
    if isinstance(right, int):
        return right == port
    if isinstance(right, dict):
        if "set" in right:
            hits = [_port_matches(x, port) for x in right["set"]]
            return True if True in hits else None if None in hits else False
        if "range" in right:
            lo, hi = right["range"]
            return lo <= port <= hi if isinstance(lo, int) and isinstance(hi, int) else None
    return None


def _rule(exprs: list, port: int) -> tuple[bool | None, str | None]:
    """(does the rule match UDP to `port`: True, False or None (cannot tell), its
    verdict or None)."""
    applies: bool | None = True
    verdict = None
    for e in exprs:
        if not isinstance(e, dict) or len(e) != 1:
            applies = None if applies else applies
            continue
        (key, val), = e.items()
        if key in VERDICTS:
            verdict = verdict or key
        elif key in HARMLESS:
            continue
        elif key == "match":
            hit = _match(val, port)
            if hit is False:
                applies = False
            elif hit is None and applies is not False:
                applies = None
        elif applies is not False:
            applies = None   # xt, vmap, limit, set updates...: not weighed
    return applies, verdict


def _match(m: dict, port: int) -> bool | None:
    left, right, op = m.get("left"), m.get("right"), m.get("op")
    payload = left.get("payload") if isinstance(left, dict) else None
    meta = left.get("meta") if isinstance(left, dict) else None
    if op not in ("==", "!=", "in"):
        return None
    if payload and payload.get("field") == "dport" and payload.get("protocol") in ("udp", "th"):
        hit = _port_matches(right, port)
    elif meta and meta.get("key") == "l4proto":
        if isinstance(right, str):
            hit = right == "udp"
        elif isinstance(right, dict) and "set" in right:
            hit = "udp" in right["set"]
        else:
            return None
    else:
        return None
    if hit is None:
        return None
    return hit if op != "!=" else not hit


def nft_findings(doc: dict, port: int, families=("inet", "ip", "netdev")) -> tuple[list, list]:
    """(sure, maybe): lines naming each input-path chain that drops UDP to `port`, and
    those that may (after a rule or jump the reader cannot weigh)."""
    chains, rules = {}, {}
    for item in doc.get("nftables", []):
        if "chain" in item:
            c = item["chain"]
            chains[(c["family"], c["table"], c["name"])] = c
        elif "rule" in item:
            r = item["rule"]
            rules.setdefault((r["family"], r["table"], r["chain"]), []).append(r)
    sure, maybe = [], []
    for key, c in chains.items():
        if c.get("hook") not in FIREWALL_HOOKS + ("ingress",) or c["family"] not in families:
            continue
        name = f"nft {c['family']} {c['table']} {c['name']}"
        uncertain, decided = False, None
        for r in rules.get(key, []):
            applies, verdict = _rule(r.get("expr", []), port)
            if applies is False or verdict is None:
                continue
            if applies is None or verdict not in ("accept", "drop", "reject"):
                uncertain = uncertain or verdict != "continue"
                continue
            decided = (verdict, r)
            break
        if decided and decided[0] in DROPS:
            line = f"{name}: rule handle {decided[1].get('handle')} {decided[0]}s UDP {port}"
            (maybe if uncertain else sure).append(line)
        elif decided is None and c.get("policy") == "drop":
            line = f"{name}: policy drop" + (", after rules the reader cannot weigh" if
                                             uncertain else f", and no rule accepts UDP {port}")
            (maybe if uncertain else sure).append(line)
    return sure, maybe


IPT_RULE = re.compile(r"^-A (INPUT|PREROUTING)\b(.*?)(?:\s+-j\s+(\S+))?\s*$")


def iptables_findings(save: str, port: int, tool: str = "iptables") -> tuple[list, list]:
    """The same from `iptables-save` text (rules iptables-nft and legacy tables hold)."""
    sure, maybe = [], []
    table, policy, decided, uncertain = None, {}, {}, set()
    for line in save.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        m = re.match(r"^:(INPUT|PREROUTING) (\w+)", line)
        if m:
            policy[(table, m.group(1))] = m.group(2)
        m = IPT_RULE.match(line.strip())
        if not m or (table, m.group(1)) in decided:
            continue
        key, words, target = (table, m.group(1)), m.group(2).split(), m.group(3)
        if target is None:
            continue
        applies = _ipt_applies(words, port)
        if applies is False:
            continue
        if applies is None or target not in ("ACCEPT", "DROP", "REJECT"):
            if target != "LOG":
                uncertain.add(key)
            continue
        decided[key] = target
        if target in ("DROP", "REJECT"):
            (maybe if key in uncertain else sure).append(f"{tool} -t {table} {key[1]}: "
                                                         f"{line.strip()}")
    for key, pol in policy.items():
        if pol == "DROP" and key not in decided:
            text = f"{tool} -t {key[0]} {key[1]}: policy DROP"
            if key in uncertain:
                maybe.append(text + ", after rules the reader cannot weigh")
            else:
                sure.append(text + f", and no rule accepts UDP {port}")
    return sure, maybe


def _ipt_applies(words: list[str], port: int) -> bool | None:
    """Does an iptables rule's match part take UDP to `port`? None: it holds a match the
    reader does not weigh (an address, an interface, negation, a module's option)."""
    applies: bool | None = True
    i = 0
    while i < len(words):
        w = words[i]
        if w == "!":
            return None
        if w == "-p" and i + 1 < len(words):
            if words[i + 1] not in ("udp", "17", "all"):
                return False
            i += 2
            continue
        if w == "-m" and i + 1 < len(words) and words[i + 1] in ("udp", "multiport"):
            i += 2
            continue
        if w in ("--dport", "--dports", "--destination-port") and i + 1 < len(words):
            if not _ipt_port(words[i + 1], port):
                return False
            i += 2
            continue
        applies = None   # anything else: a condition not weighed
        i += 1
    return applies


def _ipt_port(spec: str, port: int) -> bool:
    for part in spec.split(","):
        lo, colon, hi = part.partition(":")
        try:
            if int(lo or 0) <= port <= (int(hi) if hi else 65535 if colon else int(lo)):
                return True
        except ValueError:
            return False
    return False


def output(argv: list[str]) -> str | None:
    """A tool's stdout, or None when it is missing, fails or hangs."""
    if not shutil.which(argv[0]):
        return None
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def firewall(f: Facts) -> list[Finding]:
    port, v6 = f.plan.port, f.plan.ipv6_underlay
    sure, maybe = [], []
    text = output(["nft", "-j", "list", "ruleset"])
    if text:
        try:
            a, b = nft_findings(json.loads(text), port,
                                ("inet", "ip6" if v6 else "ip", "netdev"))
            sure, maybe = sure + a, maybe + b
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
    tool = "ip6tables-save" if v6 else "iptables-save"
    save = output([tool])
    if save:
        a, b = iptables_findings(save, port, tool.removesuffix("-save"))
        sure += [x for x in a if x not in sure]
        maybe += [x for x in b if x not in maybe]
    out = []
    if sure:
        out.append(Finding("host.firewall", "error", f"the firewall drops VXLAN (UDP {port}): "
                           + "; ".join(sure), "peers' packets never reach the VTEP",
                           f"accept UDP {port} from the peers' underlay addresses before "
                           "these rules"))
    if maybe:
        out.append(Finding("host.firewall-unclear", "warning", f"the firewall may drop VXLAN "
                           f"(UDP {port}): " + "; ".join(maybe), "rules with conditions or "
                           "jumps this check does not follow come first",
                           f"check that UDP {port} from the peers is accepted; `vtep doctor "
                           "--probe` tests it"))
    return out or [ok("host.firewall", f"no input rule drops UDP {port}")]


# --- checksum offload -----------------------------------------------------------------------

NAT = re.compile(r'"(masquerade|snat|dnat)": *[{n]|-j (MASQUERADE|SNAT|DNAT)\b')


def offload(f: Facts) -> list[Finding]:
    """Tx checksum offload on the vxlan device while this host NATs: some kernels then
    send NATed VXLAN packets with a bad outer UDP checksum, which peers drop until TCP
    retries (the 63-second stalls of flannel-io/flannel#1279 and
    kubernetes/kubernetes#88986, still a known limitation in flannel's troubleshooting
    guide). Without NAT the bug has nothing to act on."""
    if f.dev is None or f.mode != "kernel":
        return []
    k = output(["ethtool", "-k", f.device])
    if k is None:
        return [Finding("host.checksum-offload", "info", f"could not read {f.device}'s "
                        "offloads (ethtool missing or refused)", "", "")]
    on = re.search(r"^tx-checksum-ip-generic: on", k, re.M) is not None
    nat = any(NAT.search(output(argv) or "") for argv in
              (["nft", "-j", "list", "ruleset"], ["iptables-save", "-t", "nat"]))
    if on and nat:
        return [Finding("host.checksum-offload", "warning",
                        f"{f.device} has tx checksum offload on and this host NATs",
                        "some kernels corrupt the outer UDP checksum of NATed VXLAN "
                        "packets: connections through services stall for about 63 s",
                        f"ethtool -K {f.device} tx-checksum-ip-generic off")]
    return [ok("host.checksum-offload", f"{f.device} tx checksum offload "
               f"{'on' if on else 'off'}, {'NAT' if nat else 'no NAT'} on this host")]
