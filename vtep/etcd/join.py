"""`vtep run --etcd` before the event loop: who this node is, its registration, and the
first plan.

join(config) connects (the --etcd URLs and TLS files), works out the node's name (the
hostname unless --name) and underlay address (the source address the kernel picks
towards etcd unless --underlay-ip), registers it (membership.register: the subnet it
held before, or the lowest free one), reads the cluster once and returns the plan that
snapshot makes, with the EtcdSource that keeps it current. Nothing is left behind when
a step fails: the registration is revoked and the client closed.
"""
from __future__ import annotations

import socket
from typing import NamedTuple

from .. import __version__, host
from ..config import RunConfig
from ..errors import HostMismatch, VtepError
from . import membership, model
from .endpoints import TLSFiles, parse_endpoints
from .gateway import Client
from .source import EtcdSource


class _Local(NamedTuple):
    """This node as host.underlay_facts asks for it, before the plan exists."""
    name: str
    underlay_ip: str
    underlay_dev: str | None = None


def source_address(endpoint) -> str:
    """The address the kernel sends from towards the endpoint's host (a UDP connect():
    a route lookup, no packet sent)."""
    fam = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
    try:
        infos = socket.getaddrinfo(endpoint.host, endpoint.port, fam, socket.SOCK_DGRAM)
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.connect(infos[0][4])
            return s.getsockname()[0]
    except OSError as e:
        raise HostMismatch(f"no route to etcd {endpoint.host} to take this node's underlay "
                           f"address from ({e.strerror or e}); give --underlay-ip") from None


def join(config: RunConfig):
    """(plan, EtcdSource) for this node; registered in the cluster at config.etcd."""
    e = config.etcd
    endpoints = parse_endpoints(e.endpoints)
    tls = TLSFiles(e.cacert, e.cert, e.key)
    client = Client(endpoints, tls=tls if tls.given else None)
    layout = model.Layout(e.prefix)
    where = f"etcd {endpoints[0].scheme}://{endpoints[0].netloc}{e.prefix}"
    reg = None
    try:
        name = e.name or socket.gethostname()
        underlay_ip = e.underlay_ip or source_address(endpoints[0])
        under = host.underlay_facts(_Local(name, underlay_ip))

        def register():
            return membership.register(client, layout, name=name, underlay_ip=underlay_ip,
                                       mode=config.mode, mtu=under.mtu, version=__version__,
                                       ttl=e.ttl)
        reg = register()
        cluster, members, revision = membership.snapshot(client, layout)
        plan = model.to_plan(cluster, list(members.values()), where)
        source = EtcdSource(client, layout, reg, cluster, members, revision, where=where,
                            ttl=e.ttl, register=register)
        return plan, source
    except BaseException:
        if reg is not None:
            try:
                membership.deregister(client, layout, reg)
            except VtepError:
                pass   # the short lease then expires on its own
        client.close()
        raise
