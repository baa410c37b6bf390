"""What `vtep run` was asked to do, as one frozen value.

`commands.run` builds a RunConfig once from the command line (and, for
`--mtu auto`, from what probing found) and hands it to the pieces it composes:
the plan source, the device backend, the reconciler and the event loop. Nothing
below the CLI reads argparse objects; tests and benchmarks build a RunConfig
directly.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

DEFAULT_DEVICE = "vxlan0"
DEFAULT_STATE_DIR = "/run/vtep"
DEFAULT_INTERVAL = 10.0
MODES = ("kernel", "userspace")
DEFAULT_METRICS_ADDRESS = "127.0.0.1"   # loopback: metrics are not for the whole network


def parse_listen(text: str) -> tuple[str, int]:
    """`--metrics [ADDR:]PORT` -> (address, port). ADDR is an IP address, IPv6 in
    brackets (`[::1]:9470`); without it the address is loopback. Raises ValueError with
    the reason (the CLI turns it into a one-line usage error)."""
    addr, sep, port = text.rpartition(":")
    if not sep:
        addr, port = DEFAULT_METRICS_ADDRESS, text
    elif addr.startswith("[") and addr.endswith("]"):
        addr = addr[1:-1]
        if ":" not in addr:
            raise ValueError(f"{text!r}: brackets are for IPv6 addresses ([::1]:PORT)")
    elif ":" in addr:   # an IPv6 address without brackets: its last group would be the port
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, [ADDR]:PORT")
    elif not addr:
        raise ValueError(f"{text!r}: an address before the colon, or only the port")
    try:
        addr = str(ipaddress.ip_address(addr))
    except ValueError:
        raise ValueError(f"{addr!r} is not an IP address ([ADDR:]PORT)") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{port!r} is not a port number (1 to 65535)")
    return addr, int(port)


@dataclass(frozen=True)
class EtcdRun:
    """`vtep run --etcd`: where the cluster lives, and who this node is in it."""
    endpoints: str                     # URL[,URL...]
    prefix: str = "/vtep"
    cacert: str | None = None          # TLS: the CA of etcd's certificate
    cert: str | None = None            # TLS: our client certificate and key
    key: str | None = None
    name: str | None = None            # None: the hostname
    underlay_ip: str | None = None     # None: the source address of the route to etcd
    ttl: int = 20                      # s: the membership lease (renewed every ttl/3)


@dataclass(frozen=True)
class RunConfig:
    mode: str                          # "kernel": the Linux vxlan device; "userspace": a TAP
    plan_path: str | None              # the plan file (re-read on SIGHUP); None with etcd
    node: str | None = None            # None: the node whose underlay_ip is local
    device: str = DEFAULT_DEVICE
    interval: float = DEFAULT_INTERVAL  # s between full resyncs
    once: bool = False                 # converge once and exit (kernel only)
    keep: bool = False                 # leave the device in place on exit (kernel only)
    replace: bool = False              # recreate a device of ours whose settings differ
    df: str | None = None              # the vxlan device's outer DF policy (kernel only)
    state_dir: str = DEFAULT_STATE_DIR
    # an overlay MTU that outranks the plan's, kept across plan re-reads: `--mtu N`, or
    # what `--mtu auto` found at start
    mtu: int | None = None
    # `--mtu auto` only: the peers that did not answer at start, probed again at every
    # periodic resync (vtep.reprobe); None without `--mtu auto`
    reprobe: tuple[str, ...] | None = None
    accept_any_source: bool = False    # userspace: VXLAN from any source, not only peers
    offload: bool = True               # userspace: TAP offloads, UDP GSO/GRO (vtep.offload)
    etcd: EtcdRun | None = None        # the plan comes from etcd instead of plan_path
    # `--metrics`: (address, port) the Prometheus endpoint listens on (vtep.metrics); None: off
    metrics: tuple[str, int] | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode: {self.mode!r} is not one of {', '.join(MODES)}")
