"""The `vtep` command line: parses, dispatches, and alone maps errors to exit codes.

Exit status: 0 success; 1 a check or demo step failed; 2 bad plan or usage;
3 not permitted (not root / no CAP_NET_ADMIN); 4 the host does not match the
plan (underlay IP or device missing, port in use, a route not made by vtep in
the way) or another live agent manages the device; 5 an existing device is
incompatible (see --replace) or was not made by vtep; 6 a lab step failed; 7 the
etcd store is unreachable or refuses a request (`run --etcd`, `cluster`); 70 an
internal error (a bug: VTEP_DEBUG=1 shows its traceback); 130 interrupted.

A reader that leaves early (`vtep plan ... | head -1`) is not an error: the rest
of the output is discarded, nothing is written to stderr, and the exit status is
the one the command would have had with its output sent to /dev/null.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import ipaddress
import math
import os
import sys

from . import __version__
from .errors import UsageError, VtepError
from .inet import IP_MAXPACKET, MIN_MTU

EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 70  # EX_SOFTWARE


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump, exit 2 via UsageError
        raise UsageError(f"{message} (see {self.prog} --help)")


def _mtu_arg(text: str):
    if text == "auto":
        return text
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mtu takes `auto` or a number, not {text!r}")
    if not MIN_MTU <= v <= IP_MAXPACKET:
        raise argparse.ArgumentTypeError(f"--mtu {v} is outside {MIN_MTU}..{IP_MAXPACKET}")
    return v


def _seconds(lo: float, hi: float):
    """A finite number of seconds in lo..hi: inf, nan and out-of-range values are
    usage errors at parse time, before anything is touched."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds")
        if not (math.isfinite(v) and lo <= v <= hi):
            raise argparse.ArgumentTypeError(f"{text}: must be {lo:g} to {hi:g} seconds")
        return v
    return parse


def _ifname_arg(text: str) -> str:
    from .plan import ifname_problem  # here: vxinspect imports this module, not the plan
    why = ifname_problem(text)
    if why:
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid interface name: {why}")
    return text


def _directory_arg(text: str) -> str:
    if not text:  # an empty path would silently mean the current directory
        raise argparse.ArgumentTypeError("'' is not a directory: name one")
    return text


INTERVAL_MIN, INTERVAL_MAX = 0.1, 86400.0  # below 0.1 s the resync loop spins a core
TIMEOUT_MIN, TIMEOUT_MAX = 0.01, 60.0      # per probe; 2 tries per size, ~12 sizes per peer


TTL_MIN, TTL_MAX = 3, 3600


def _int_arg(lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text}: not a whole number") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{text}: must be {lo} to {hi}")
        return v
    return parse


def _ip_arg(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text}: not an IP address") from None


def _plan_args(p, node_required=False, config_required=True):
    p.add_argument("--config", "-c", required=config_required, metavar="F",
                   help="cluster plan (TOML)")
    p.add_argument("--node", "-n", required=node_required, metavar="N",
                   help="this node's name in the plan (default: the node whose underlay_ip "
                        "is an address of this host)")
    p.add_argument("--device", default="vxlan0", metavar="DEV", type=_ifname_arg,
                   help="VTEP device name (default vxlan0)")


def _etcd_args(p, required: bool = True) -> None:
    """Where the cluster lives in etcd: `vtep cluster ...` and `vtep run --etcd`."""
    p.add_argument("--etcd", required=required, metavar="URL[,URL...]",
                   help="etcd's client URLs, tried in turn (http:// or https://)")
    p.add_argument("--etcd-prefix", default="/vtep", metavar="P",
                   help="the cluster's keys live under it (default /vtep)")
    p.add_argument("--etcd-cacert", metavar="F", help="CA of etcd's server certificate")
    p.add_argument("--etcd-cert", metavar="F", help="client certificate (etcd "
                   "--client-cert-auth)")
    p.add_argument("--etcd-key", metavar="F", help="its private key")


def _metrics_arg(text: str) -> tuple[str, int]:
    from .config import parse_listen
    try:
        return parse_listen(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _subnet_len_arg(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--subnet-len and --subnet6-len take a prefix "
                                         f"length, not {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vtep", description="VXLAN overlays between nodes, as flannel and "
                "Calico build them.", epilog=__doc__.split("\n\n", 1)[1],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"vtep {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    s = sub.add_parser("plan", help="print the state a node will get, as iproute2 commands")
    _plan_args(s)
    s.set_defaults(handler="vtep.commands:plan")

    s = sub.add_parser("run", help="realise a node's state and keep it converged")
    mode = s.add_mutually_exclusive_group(required=True)
    mode.add_argument("--kernel", dest="mode", action="store_const", const="kernel",
                      help="the Linux vxlan device, programmed through netlink")
    mode.add_argument("--userspace", dest="mode", action="store_const", const="userspace",
                      help="a TAP device read in userspace")
    _plan_args(s, config_required=False)   # --config or --etcd: commands.run checks
    s.add_argument("--interval", type=_seconds(INTERVAL_MIN, INTERVAL_MAX),
                   default=10.0, metavar="S",
                   help=f"full resync period, seconds (default 10; {INTERVAL_MIN:g} to "
                        f"{INTERVAL_MAX:g})")
    s.add_argument("--once", action="store_true", help="converge once and exit")
    s.add_argument("--keep", action="store_true", help="leave the state in place on exit")
    s.add_argument("--replace", action="store_true",
                   help="recreate an existing device whose settings differ from the plan")
    s.add_argument("--df", choices=("set", "unset", "inherit"),
                   help="outer IPv4 DF policy of the kernel device (default: kernel default)")
    s.add_argument("--state-dir", default="/run/vtep", metavar="DIR",
                   type=_directory_arg,
                   help="where run-time state lives (default /run/vtep)")
    s.add_argument("--mtu", type=_mtu_arg, metavar="auto|N",
                   help="overlay MTU: `auto` probes every peer's underlay path at start (see "
                        "`vtep mtu`); N overrides the plan (a warning if the underlay cannot "
                        "carry it)")
    s.add_argument("--accept-any-source", action="store_true",
                   help="userspace: accept VXLAN from any source, not only the plan's nodes")
    s.add_argument("--no-offload", dest="offload", action="store_false",
                   help="userspace: one frame per system call (no TAP offloads, UDP GSO or "
                        "GRO), to compare with the offload loops")
    s.add_argument("--metrics", type=_metrics_arg, metavar="[ADDR:]PORT",
                   help="serve Prometheus metrics over HTTP on ADDR:PORT (default address "
                        "127.0.0.1; IPv6 as [::1]:PORT); see README, Metrics")
    e = s.add_argument_group("the cluster in etcd (instead of --config)")
    _etcd_args(e, required=False)
    e.add_argument("--name", metavar="N",
                   help="this node's name in the cluster (default: the hostname)")
    e.add_argument("--underlay-ip", metavar="IP", type=_ip_arg,
                   help="this node's underlay address (default: the source address of the "
                        "route towards etcd)")
    e.add_argument("--ttl", type=_int_arg(TTL_MIN, TTL_MAX), default=20, metavar="S",
                   help=f"membership lease, seconds: peers drop this node that long after "
                        f"it dies (default 20; {TTL_MIN} to {TTL_MAX})")
    s.set_defaults(handler="vtep.commands:run")

    s = sub.add_parser("status", help="what each running vtep on this host is doing")
    s.add_argument("--state-dir", default="/run/vtep", metavar="DIR",
                   type=_directory_arg)
    s.add_argument("--json", action="store_true", help="print the status files as JSON")
    s.set_defaults(handler="vtep.commands:status")

    s = sub.add_parser("doctor", help="check one node: agent, device, host, and (--probe) "
                       "the data path; one finding per line")
    _plan_args(s, config_required=False)
    _etcd_args(s.add_argument_group("the cluster in etcd (instead of --config)"),
               required=False)
    s.add_argument("--state-dir", default="/run/vtep", metavar="DIR",
                   help="where the agent writes its status file (default /run/vtep)")
    s.add_argument("--json", action="store_true", help="the findings as one JSON document")
    s.add_argument("--probe", action="store_true",
                   help="also probe each peer: underlay path MTU, pings through the tunnel "
                        "with a capture vxinspect judges")
    s.set_defaults(handler="vtep.doctor.command:doctor")

    s = sub.add_parser("mtu", help="probe each peer's underlay path MTU; recommend an overlay MTU")
    _plan_args(s)
    s.add_argument("--timeout", type=_seconds(TIMEOUT_MIN, TIMEOUT_MAX),
                   default=0.4, metavar="S",
                   help=f"wait per probe, seconds (default 0.4, {TIMEOUT_MIN:g} to "
                        f"{TIMEOUT_MAX:g}; 2 tries per size)")
    s.set_defaults(handler="vtep.commands:mtu")

    s = sub.add_parser("down", help="remove the state left by --keep, --once or a crash")
    _plan_args(s)
    s.add_argument("--state-dir", default="/run/vtep", metavar="DIR",
                   type=_directory_arg,
                   help="where `vtep run` keeps its status file (default /run/vtep)")
    s.set_defaults(handler="vtep.commands:down")

    s = sub.add_parser("pod", help="attach a network namespace to the node's bridge")
    podsub = s.add_subparsers(dest="pod_command", metavar="ACTION", parser_class=_Parser)
    podsub.required = True
    for action in ("add", "del"):
        a = podsub.add_parser(action, help=f"{action} a pod")
        a.add_argument("name", metavar="NAME", help="pod (network namespace) name")
        # del finds the pod's node in the state files when no plan is named
        _plan_args(a, config_required=(action == "add"))
        a.add_argument("--bridge", default="br0", type=_ifname_arg,
                       help="node bridge (default br0)")
        a.add_argument("--netns", metavar="PATH",
                       help="an existing network namespace path (as a CNI runtime hands over)")
        a.add_argument("--state-dir", default="/run/vtep", metavar="DIR",
                       type=_directory_arg)
        if action == "add":
            a.add_argument("--ip", metavar="IP[,IP6]",
                           help="pod address, at most one per family (default: the next "
                           "free in the node's subnet of each family the plan has)")
        a.set_defaults(handler=f"vtep.pods:{action}_command")

    s = sub.add_parser("lab", help="the seed topology in network namespaces on this machine")
    s.add_argument("action", choices=("up", "demo", "down"))
    s.add_argument("--mode", choices=("kernel", "userspace", "mixed"),
                   help="up/demo: kernel (default), userspace, or mixed (kernel on network-1, "
                        "userspace on network-2); demo on a lab that is up: must match it")
    s.add_argument("--prefix", default="vtl-", help="namespace name prefix (default vtl-)")
    s.add_argument("--keep", action="store_true", help="demo: leave the lab up afterwards")
    s.add_argument("--capture", metavar="FILE", help="demo: keep the router capture here")
    s.add_argument("--store", choices=("plan", "etcd"),
                   help="where the cluster lives: the plan file (default), or etcd in the "
                        "router's namespace, where the nodes register themselves")
    s.add_argument("--nodes", type=_int_arg(2, 32), metavar="N",
                   help="nodes network-1 .. network-N, each on its own underlay subnet "
                        "(default 2, at most 32)")
    s.add_argument("--underlay", choices=("ipv4", "ipv6"),
                   help="up/demo: the underlay's address family (default ipv4; ipv6: the "
                        "seed's IPv6 twin, overlay MTU 1430); demo on a lab that is up: must "
                        "match it")
    s.add_argument("--dual-stack", action="store_true",
                   help="up/demo: IPv6 pods too (overlay6 fd00:172:2::/48, a /64 per node); "
                        "demo checks every pair over IPv4 and over IPv6")
    s.set_defaults(handler="vtep.lab:command")

    s = sub.add_parser("cluster", help="the cluster's membership in etcd")
    csub = s.add_subparsers(dest="cluster_command", metavar="ACTION", parser_class=_Parser)
    csub.required = True
    a = csub.add_parser("init", help="write the cluster config (and reserve the plan's "
                        "node subnets)")
    a.add_argument("--config", "-c", required=True, metavar="F",
                   help="a plan file; its [cluster] table alone is enough")
    a.add_argument("--subnet-len", type=_subnet_len_arg, default=24, metavar="N",
                   help="each node's subnet is a /N of the overlay (default 24)")
    a.add_argument("--subnet6-len", type=_subnet_len_arg, default=64, metavar="N",
                   help="each node's IPv6 subnet is a /N of the overlay6 (default 64)")
    a.add_argument("--force", action="store_true",
                   help="replace an existing config that differs")
    a.set_defaults(handler="vtep.clustercmd:init")
    a = csub.add_parser("show", help="every node: subnet, underlay IP, MAC, mode, status")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler="vtep.clustercmd:show")
    a = csub.add_parser("remove", help="free a node's name and subnet at once")
    a.add_argument("node_name", metavar="NODE")
    a.set_defaults(handler="vtep.clustercmd:remove")
    a = csub.add_parser("export", help="the live cluster as a plan file (TOML)")
    a.set_defaults(handler="vtep.clustercmd:export")
    for a in csub.choices.values():
        _etcd_args(a)
    return p


class _UntilReaderLeaves:
    """sys.stdout (and sys.stderr) while a command runs. Once the reader of the
    pipe has gone (`| head -1`: the write fails with EPIPE, as Python ignores
    SIGPIPE), the descriptor is pointed at /dev/null, as the Python docs' note on
    SIGPIPE advises, so the rest of the output, and the interpreter's flush at
    exit, go nowhere quietly and the command ends with its own exit status."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            _to_devnull(self._stream)
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except BrokenPipeError:
            _to_devnull(self._stream)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _to_devnull(stream) -> None:
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # no descriptor behind it: nothing to redirect
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


@contextlib.contextmanager
def output_until_reader_leaves():
    """Run a command's body with sys.stdout and sys.stderr guarded (vtep's and
    vxinspect's main both do); flushed here, so a reader gone before the last
    buffered write is handled here and not reported as 'Exception ignored' at exit."""
    real_out, real_err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err = _UntilReaderLeaves(real_out), _UntilReaderLeaves(real_err)
    try:
        yield
    finally:
        out.flush()
        err.flush()
        sys.stdout, sys.stderr = real_out, real_err


def main(argv=None) -> int:
    with output_until_reader_leaves():
        return _main(argv)


def _main(argv) -> int:
    try:
        args = build_parser().parse_args(argv)
        module, func = args.handler.split(":")
        return getattr(importlib.import_module(module), func)(args) or 0
    except VtepError as e:
        for line in getattr(e, "problems", None) or [str(e)]:
            print(f"vtep: {line}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("vtep: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # a bug, not bad input: one line, the traceback on request
        if os.environ.get("VTEP_DEBUG"):
            raise
        print(f"vtep: internal error: {type(e).__name__}: {e} (VTEP_DEBUG=1 shows where; "
              "please report it)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
