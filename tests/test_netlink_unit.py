"""vtep.netlink without root: the codec against the kernel's numbers, and Rtnl and Events
driven through a stand-in for the rtnetlink socket that answers as the kernel does (acks,
errors with their errno and extended-ack text, multipart dumps ending in NLMSG_DONE,
notifications). Every expected value is written from the kernel's headers
(tests/nlkernel.py), never taken from vtep.netlink."""
import errno
import os
import socket
import struct

import pytest
from pyroute2.netlink.rtnl.ndmsg import ndmsg   # an independent encoder of what we decode

from vtep import netlink, nlmsg
from vtep.nlmsg import FdbEntry, NeighEntry, Op, RouteEntry

# the kernel's numbers, its messages built by hand, and stand-ins for its sockets
from nlkernel import (AF_BRIDGE, AF_INET, AF_INET6, FakeKernel, IFA_ADDRESS, IFA_CACHEINFO,
                      IFA_LABEL, IFA_LOCAL, MAC, MAC_BYTES, NDA_CACHEINFO, NDA_DST, NDA_IFINDEX,
                      NDA_LLADDR, NDA_MASTER, NDA_PORT, NDA_PROBES, NDA_SRC_VNI, NDA_VNI,
                      NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK,
                      NLMSGERR_ATTR_MSG, NLMSGERR_ATTR_OFFS, NLMSG_DONE, NLM_F_ACK,
                      NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_MULTI,
                      NLM_F_REPLACE, NLM_F_REQUEST, NTF_SELF, NUD_FAILED, NUD_NOARP,
                      NUD_PERMANENT, NUD_REACHABLE, NUD_STALE, Notifications, PROTO_BOOT,
                      PROTO_KERNEL, PROTO_STATIC, PROTO_VTEP, RTA_DST, RTA_GATEWAY,
                      RTA_MULTIPATH, RTA_NH_ID, RTA_OIF, RTA_PREFSRC, RTA_PRIORITY, RTA_TABLE,
                      RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR,
                      RTMGRP_IPV6_ROUTE, RTMGRP_LINK, RTMGRP_NEIGH,
                      RTM_DELADDR, RTM_DELLINK, RTM_DELNEIGH, RTM_DELROUTE, RTM_GETNEIGH,
                      RTM_GETROUTE, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWNEIGH, RTM_NEWROUTE,
                      RTNH_F_DEAD, RTNH_F_LINKDOWN, RTNH_F_ONLINK, RTN_UNICAST,
                      RT_SCOPE_NOWHERE, RT_TABLE_COMPAT, RT_TABLE_LOCAL, RT_TABLE_MAIN,
                      RT_TABLE_UNSPEC, SCOPE_LINK, SCOPE_UNIVERSE, SOL_NETLINK, SO_RCVBUF,
                      SO_RCVBUFFORCE, acks, done, err, ifa, ifinfo, ip4, ndm, nla, message, rtm,
                      rtnl_on, split, u32)




def test_a_neighbour_set_is_the_kernels_rtm_newneigh_byte_for_byte():
    data = nlmsg.encode(Op("neigh", "set", "10.244.1.0", MAC), 7, 42)
    assert data == message(RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
                         42, ndm(AF_INET, 7, NUD_PERMANENT)
                         + nla(NDA_DST, ip4("10.244.1.0")) + nla(NDA_LLADDR, bytes.fromhex(
                             "5a0c71865911")))
    data = nlmsg.encode(Op("neigh", "del", "10.244.1.0"), 7, 43)
    assert data == message(RTM_DELNEIGH, NLM_F_REQUEST | NLM_F_ACK, 43,
                         ndm(AF_INET, 7, 0) + nla(NDA_DST, ip4("10.244.1.0")))


def test_an_fdb_set_is_self_permanent_on_the_bridge_family_byte_for_byte():
    """`bridge fdb replace MAC dev vxlan0 dst IP self permanent`, as iproute2 sends it."""
    data = nlmsg.encode(Op("fdb", "set", MAC, "192.168.2.142"), 7, 44)
    assert data == message(RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
                         44, ndm(AF_BRIDGE, 7, NUD_PERMANENT, NTF_SELF)
                         + nla(NDA_LLADDR, bytes.fromhex("5a0c71865911"))
                         + nla(NDA_DST, ip4("192.168.2.142")))


def test_a_flood_entry_is_appended_never_replaced_byte_for_byte():
    """`bridge fdb append 00:00:00:00:00:00 dev vxlan0 dst IP self permanent`: the kernel
    adds a remote to the all-zeros entry only with NLM_F_APPEND (0x800), and refuses to
    replace one."""
    data = nlmsg.encode(Op("fdb", "append", "00:00:00:00:00:00", "192.168.2.142"), 7, 46)
    assert data == message(RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | 0x800,
                           46, ndm(AF_BRIDGE, 7, NUD_PERMANENT, NTF_SELF)
                           + nla(NDA_LLADDR, b"\0" * 6) + nla(NDA_DST, ip4("192.168.2.142")))


def test_an_fdb_delete_repeats_the_remotes_overrides_in_the_kernels_encoding():
    """vxlan_fdb_delete matches a remote on dst, port, vni and ifindex: a delete without
    them misses a remote that has them. NDA_PORT is big-endian (vxlan_nla_get_addr:
    nla_get_be16), NDA_VNI, NDA_IFINDEX and NDA_SRC_VNI host-order u32."""
    stale = FdbEntry(MAC, "192.168.9.9", NUD_PERMANENT, port=8472, vni=11, rifindex=3,
                     src_vni=12)
    data = nlmsg.encode(Op("fdb", "del", stale.mac, stale.dst, fdb=stale), 7, 45)
    assert data == message(RTM_DELNEIGH, NLM_F_REQUEST | NLM_F_ACK, 45,
                         ndm(AF_BRIDGE, 7, NUD_PERMANENT, NTF_SELF)
                         + nla(NDA_LLADDR, bytes.fromhex("5a0c71865911"))
                         + nla(NDA_DST, ip4("192.168.9.9"))
                         + nla(NDA_PORT, b"\x21\x18")         # 8472
                         + nla(NDA_VNI, u32(11)) + nla(NDA_IFINDEX, u32(3))
                         + nla(NDA_SRC_VNI, u32(12)))
    # and our decoder reads the kernel's bytes back into the same remote
    ((typ, _, _, body),) = split(data)
    assert nlmsg.decode_neigh(body, 0, len(body)) == (AF_BRIDGE, stale)


def test_a_route_add_is_onlink_tagged_and_exclusive_byte_for_byte():
    data = nlmsg.encode(Op("route", "set", "10.244.1.0/24", "10.244.1.0"), 7, 46)
    assert data == message(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                         46, rtm(AF_INET, 24, RT_TABLE_MAIN, PROTO_VTEP, SCOPE_UNIVERSE,
                                 RTN_UNICAST, RTNH_F_ONLINK)
                         + nla(RTA_DST, ip4("10.244.1.0")) + nla(RTA_OIF, u32(7))
                         + nla(RTA_GATEWAY, ip4("10.244.1.0")))


def test_a_route_delete_without_a_dump_matches_any_scope_protocol_and_type():
    """fib_table_delete skips a field given as 0 (protocol, type) and matches any scope
    with RT_SCOPE_NOWHERE (255), as `ip route del` sends it."""
    data = nlmsg.encode(Op("route", "del", "10.244.1.0/24", "10.244.1.0"), 7, 47)
    assert data == message(RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK, 47,
                         rtm(AF_INET, 24, RT_TABLE_MAIN, 0, RT_SCOPE_NOWHERE, 0)
                         + nla(RTA_DST, ip4("10.244.1.0")) + nla(RTA_TABLE, u32(RT_TABLE_MAIN))
                         + nla(RTA_OIF, u32(7)) + nla(RTA_GATEWAY, ip4("10.244.1.0")))


def kernel_neigh(typ, family, ifindex, state, *attrs, flags=0):
    data = message(typ, 0, 0, ndm(family, ifindex, state, flags, RTN_UNICAST) + b"".join(attrs))
    return data, 16, len(data)


CACHEINFO = nla(NDA_CACHEINFO, struct.pack("=4I", 100, 200, 300, 1))


def test_kernel_neighbour_messages_decode():
    """As the kernel dumps them (neigh_fill_info): NDA_DST, NDA_LLADDR, NDA_CACHEINFO,
    NDA_PROBES."""
    mac = nla(NDA_LLADDR, bytes.fromhex("5a0c71865911"))
    msg = kernel_neigh(RTM_NEWNEIGH, AF_INET, 7, NUD_PERMANENT, nla(NDA_DST, ip4("10.244.1.0")),
                       mac, CACHEINFO, nla(NDA_PROBES, u32(0)))
    assert nlmsg.decode_neigh(*msg, 7) == (AF_INET, NeighEntry("10.244.1.0", MAC, 0x80))
    assert nlmsg.decode_neigh(*msg, 8) == (AF_INET, None)    # another device's
    stale = kernel_neigh(RTM_NEWNEIGH, AF_INET, 7, NUD_STALE, nla(NDA_DST, ip4("10.244.2.0")),
                         mac, CACHEINFO)
    assert nlmsg.decode_neigh(*stale)[1] == NeighEntry("10.244.2.0", MAC, NUD_STALE)
    failed = kernel_neigh(RTM_NEWNEIGH, AF_INET, 7, NUD_FAILED, nla(NDA_DST, ip4("10.244.3.0")),
                          CACHEINFO)
    assert nlmsg.decode_neigh(*failed)[1] == NeighEntry("10.244.3.0", None, NUD_FAILED)
    v6 = kernel_neigh(RTM_NEWNEIGH, AF_INET6, 7, NUD_REACHABLE,
                      nla(NDA_DST, socket.inet_pton(socket.AF_INET6, "fe80::1")), mac)
    # an IPv6 overlay's entries: NDA_DST of 16 bytes
    assert nlmsg.decode_neigh(*v6) == (AF_INET6, NeighEntry("fe80::1", MAC, NUD_REACHABLE))


def test_kernel_fdb_messages_decode_with_their_overrides():
    """vxlan_fdb_info: NDA_LLADDR, NDA_DST, then NDA_PORT (big-endian), NDA_VNI, NDA_IFINDEX,
    NDA_SRC_VNI only where they differ from the device's, NDA_CACHEINFO last."""
    msg = kernel_neigh(RTM_NEWNEIGH, AF_BRIDGE, 7, NUD_PERMANENT | NUD_NOARP,
                       nla(NDA_LLADDR, bytes.fromhex("5a0c71865911")),
                       nla(NDA_DST, ip4("192.168.2.142")), nla(NDA_PORT, b"\x21\x18"),
                       nla(NDA_VNI, u32(11)), nla(NDA_IFINDEX, u32(3)),
                       nla(NDA_MASTER, u32(5)), nla(NDA_SRC_VNI, u32(12)), CACHEINFO,
                       flags=NTF_SELF)
    assert nlmsg.decode_neigh(*msg, 7) == (AF_BRIDGE, FdbEntry(
        MAC, "192.168.2.142", 0xC0, port=8472, vni=11, rifindex=3, src_vni=12))
    plain = kernel_neigh(RTM_NEWNEIGH, AF_BRIDGE, 7, NUD_PERMANENT,
                         nla(NDA_LLADDR, bytes.fromhex("5a0c71865911")),
                         nla(NDA_DST, ip4("192.168.2.142")), CACHEINFO, flags=NTF_SELF)
    e = nlmsg.decode_neigh(*plain)[1]
    assert e == FdbEntry(MAC, "192.168.2.142", 0x80) and not e.overridden
    # the device's own address in its bridge fdb (no NDA_DST): not a remote
    own = kernel_neigh(RTM_NEWNEIGH, AF_BRIDGE, 7, NUD_PERMANENT,
                       nla(NDA_LLADDR, bytes.fromhex("06b33177abd9")), nla(NDA_MASTER, u32(5)),
                       flags=NTF_SELF)
    assert nlmsg.decode_neigh(*own) == (AF_BRIDGE, None)
    # the same remote encoded by pyroute2 (its own attribute table) decodes alike
    m = ndmsg()
    m["family"], m["ifindex"], m["state"], m["flags"] = AF_BRIDGE, 7, NUD_PERMANENT, NTF_SELF
    m["attrs"] = [("NDA_LLADDR", MAC), ("NDA_DST", "192.168.9.9"), ("NDA_PORT", 4790),
                  ("NDA_VNI", 99), ("NDA_SRC_VNI", 98)]
    m["header"]["type"] = RTM_NEWNEIGH
    m.encode()
    assert nlmsg.decode_neigh(m.data, 16, len(m.data))[1] == FdbEntry(
        MAC, "192.168.9.9", 0x80, port=4790, vni=99, src_vni=98)


def kernel_route(flags, *attrs, family=AF_INET, dst_len=24, table=RT_TABLE_MAIN,
                 proto=PROTO_VTEP, scope=SCOPE_UNIVERSE, rtype=RTN_UNICAST, tos=0):
    data = message(24, 0, 0, rtm(family, dst_len, table, proto, scope, rtype, flags, tos)
                 + b"".join(attrs))
    return data, 16, len(data)


def test_kernel_route_messages_decode():
    """As fib_dump_info writes them: RTA_TABLE, RTA_DST, RTA_PRIORITY, RTA_PREFSRC, then
    the nexthop (RTA_GATEWAY, RTA_OIF; RTNH_F_* in rtm_flags), or RTA_NH_ID, or
    RTA_MULTIPATH."""
    ours = kernel_route(RTNH_F_ONLINK, nla(RTA_TABLE, u32(254)), nla(RTA_DST, ip4("10.244.1.0")),
                        nla(RTA_GATEWAY, ip4("10.244.1.0")), nla(RTA_OIF, u32(7)))
    assert nlmsg.decode_route(*ours) == (7, 254, RouteEntry(
        "10.244.1.0/24", "10.244.1.0", True, 0, 0, PROTO_VTEP, SCOPE_UNIVERSE, RTN_UNICAST))
    # a nexthop gone dead on a down link: flagged, but not onlink
    dead = kernel_route(RTNH_F_DEAD | RTNH_F_LINKDOWN, nla(RTA_TABLE, u32(254)),
                        nla(RTA_DST, ip4("10.244.1.0")), nla(RTA_GATEWAY, ip4("10.244.1.0")),
                        nla(RTA_OIF, u32(7)))
    assert nlmsg.decode_route(*dead)[2].onlink is False
    connected = kernel_route(0, nla(RTA_TABLE, u32(254)), nla(RTA_DST, ip4("192.0.2.0")),
                             nla(RTA_PREFSRC, ip4("192.0.2.1")), nla(RTA_OIF, u32(3)),
                             proto=PROTO_KERNEL, scope=SCOPE_LINK)
    assert nlmsg.decode_route(*connected) == (3, 254, RouteEntry(
        "192.0.2.0/24", None, False, 0, 0, PROTO_KERNEL, SCOPE_LINK, RTN_UNICAST,
        prefsrc="192.0.2.1"))
    # a table above 255: rtm_table says RT_TABLE_COMPAT (252), RTA_TABLE the real one
    metric = kernel_route(RTNH_F_ONLINK, nla(RTA_TABLE, u32(1000)), nla(RTA_DST, ip4("10.9.0.0")),
                          nla(RTA_PRIORITY, u32(100)), nla(RTA_NH_ID, u32(77)),
                          nla(RTA_GATEWAY, ip4("10.244.1.0")), nla(RTA_OIF, u32(7)),
                          table=252, proto=PROTO_BOOT, tos=0x10)
    oif, table, r = nlmsg.decode_route(*metric)
    assert (oif, table, r.table, r.priority, r.nh_id, r.tos, r.proto) == (
        7, 1000, 1000, 100, 77, 0x10, PROTO_BOOT)
    # multipath: struct rtnexthop (u16 len, u8 flags, u8 hops, s32 ifindex) + its attributes
    hop = struct.pack("=HBBi", 16, 0, 0, 7) + nla(RTA_GATEWAY, ip4("10.244.1.0"))
    mp = kernel_route(0, nla(RTA_TABLE, u32(254)), nla(RTA_DST, ip4("10.8.0.0")),
                      nla(RTA_MULTIPATH, hop + hop), proto=PROTO_BOOT)
    oif, _, r = nlmsg.decode_route(*mp)
    assert oif is None and r.multipath and r.gateway is None
    v6 = kernel_route(0, nla(RTA_DST, socket.inet_pton(socket.AF_INET6, "fd00::")),
                      family=AF_INET6, dst_len=64)
    assert nlmsg.decode_route(*v6) == (None, 254, RouteEntry("fd00::/64", None, False, 0, 0,
                                                             PROTO_VTEP, SCOPE_UNIVERSE,
                                                             RTN_UNICAST))


def test_kernel_address_messages_decode_the_local_address():
    """inet_fill_ifaddr: IFA_ADDRESS is the peer on a point-to-point address, IFA_LOCAL
    the address itself (if_addr.h), whichever comes first."""
    label, cache = nla(IFA_LABEL, b"vxlan0\0"), nla(IFA_CACHEINFO, bytes(16))
    for attrs in ((nla(IFA_ADDRESS, ip4("10.0.0.2")), nla(IFA_LOCAL, ip4("10.0.0.1"))),
                  (nla(IFA_LOCAL, ip4("10.0.0.1")), nla(IFA_ADDRESS, ip4("10.0.0.2")))):
        data = message(RTM_NEWADDR, 0, 0, ifa(AF_INET, 32, 7) + b"".join(attrs) + label + cache)
        assert nlmsg.decode_addr(data, 16, len(data)) == nlmsg.AddrEntry("10.0.0.1", 32)
    only = message(RTM_NEWADDR, 0, 0, ifa(AF_INET, 24, 7) + nla(IFA_ADDRESS, ip4("10.0.0.3")))
    assert nlmsg.decode_addr(only, 16, len(only)) == nlmsg.AddrEntry("10.0.0.3", 24)
    v6 = message(RTM_NEWADDR, 0, 0, ifa(AF_INET6, 64, 7)
               + nla(IFA_ADDRESS, socket.inet_pton(socket.AF_INET6, "fe80::1")))
    # IPv6 (inet6_fill_ifaddr) sends IFA_ADDRESS alone
    assert nlmsg.decode_addr(v6, 16, len(v6)) == nlmsg.AddrEntry("fe80::1", 64)


# --- acknowledgements and dumps, through a socket that records what is sent --------------------

def test_errors_are_parsed_with_their_extended_ack_text():
    text = nla(NLMSGERR_ATTR_MSG, b"Nexthop has invalid gateway\0") + \
        nla(NLMSGERR_ATTR_OFFS, u32(36))
    capped = err(1234, 22, tlvs=text)                   # NETLINK_CAP_ACK: header only
    assert nlmsg.parse_error(capped, 16, len(capped)) == (22, 1234, "Nexthop has invalid gateway")
    # without NETLINK_CAP_ACK the whole request is echoed before the TLVs
    request = nlmsg.encode(Op("route", "set", "10.244.1.0/24", "10.244.1.0"), 7, 99)[16:]
    full = err(1235, 17, request=request, tlvs=text, flags=0)
    assert nlmsg.parse_error(full, 16, len(full)) == (17, 1235, "Nexthop has invalid gateway")
    # no TLVs: the echoed request's payload is not taken for them
    plain = err(1236, 17, request=nla(NLMSGERR_ATTR_MSG, b"not a message\0"), flags=0)
    assert nlmsg.parse_error(plain, 16, len(plain)) == (17, 1236, "")
    ok = err(1237, 0)
    assert nlmsg.parse_error(ok, 16, len(ok)) == (0, 1237, "")


def test_apply_maps_each_refusal_to_its_entry():
    ops = [Op("neigh", "set", "10.244.1.0", MAC), Op("route", "set", "10.244.1.0/24", "10.244.1.0"),
           Op("route", "set", "10.244.2.0/24", "10.244.2.0")]
    rt = rtnl_on(FakeKernel(lambda d: []))
    first = rt.seq + 1
    fake = FakeKernel(acks({first + 1: (17, "")}))
    rt.sock = fake
    assert rt.apply(ops, 7) == [(ops[1], 17, "")]
    # one sendmsg for the batch, in order, each with its own sequence number
    (sent,) = fake.sent
    assert [(typ, seq) for typ, _f, seq, _b in split(sent)] == [
        (RTM_NEWNEIGH, first), (RTM_NEWROUTE, first + 1), (RTM_NEWROUTE, first + 2)]
    fake = FakeKernel(acks({first + 5: (22, "Nexthop has invalid gateway")}))
    rt.sock = fake
    assert rt.apply(ops, 7) == [(ops[2], 22, "Nexthop has invalid gateway")]


def dump_reply(seq, *entries, flags=NLM_F_MULTI):
    """A dump's answer: one datagram of entries, then NLMSG_DONE (payload: error 0)."""
    body = b"".join(message(RTM_NEWNEIGH, flags, seq, e) for e in entries)
    return [body, message(NLMSG_DONE, NLM_F_MULTI, seq, struct.pack("=i", 0))]


def neigh_body(ip, state=NUD_PERMANENT):
    return ndm(AF_INET, 7, state) + nla(NDA_DST, ip4(ip)) + nla(NDA_LLADDR, bytes.fromhex(
        "5a0c71865911"))


def test_a_dump_is_a_filtered_request_and_an_interrupted_one_is_redone():
    """NLM_F_DUMP_INTR (0x10): the table changed while the kernel walked it; what came is
    not a consistent picture, so the dump is asked for again."""
    rounds = []

    def answer(data):
        ((typ, flags, seq, body),) = split(data)
        rounds.append((typ, flags, body))
        if len(rounds) == 1:   # half a table, flagged as interrupted
            return dump_reply(seq, neigh_body("10.244.1.0"), flags=NLM_F_MULTI | NLM_F_DUMP_INTR)
        return dump_reply(seq, neigh_body("10.244.1.0"), neigh_body("10.244.2.0"))
    rt = rtnl_on(FakeKernel(answer))
    got = rt.neighbours(7)
    assert sorted(got) == ["10.244.1.0", "10.244.2.0"]
    assert len(rounds) == 2
    # RTM_GETNEIGH, a dump, AF_INET, filtered by the kernel to our device (NDA_IFINDEX,
    # honoured with NETLINK_GET_STRICT_CHK)
    typ, flags, body = rounds[0]
    assert (typ, flags) == (RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP)
    assert body[0] == AF_INET and body[12:] == nla(NDA_IFINDEX, u32(7))


def test_a_dump_interrupted_every_time_is_an_error():
    def answer(data):
        ((_t, _f, seq, _b),) = split(data)
        return dump_reply(seq, neigh_body("10.244.1.0"), flags=NLM_F_MULTI | NLM_F_DUMP_INTR)
    fake = FakeKernel(answer)
    with pytest.raises(netlink.NetlinkRefused, match="the table kept changing during the dump"):
        rtnl_on(fake).neighbours(7)
    assert len(fake.sent) == 5


def test_fdb_and_route_dumps_ask_the_kernel_for_our_device_only():
    seen = []

    def answer(data):
        ((typ, flags, seq, body),) = split(data)
        seen.append((typ, flags, body))
        return [message(NLMSG_DONE, NLM_F_MULTI, seq, struct.pack("=i", 0))]
    rt = rtnl_on(FakeKernel(answer))
    assert rt.fdb(7) == () and rt.routes(7) == {}
    (t1, f1, fdb), (t2, f2, route) = seen
    assert (t1, f1, fdb[0]) == (RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, AF_BRIDGE)
    assert fdb[12:] == nla(NDA_IFINDEX, u32(7))
    assert (t2, f2) == (RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP)
    assert route[:12] == rtm(AF_INET, 0, RT_TABLE_MAIN, 0, 0, 0)
    assert route[12:] == nla(RTA_OIF, u32(7)) + nla(RTA_TABLE, u32(RT_TABLE_MAIN))


def test_a_dump_the_kernel_refuses_names_the_reason():
    def answer(data):
        ((_t, _f, seq, _b),) = split(data)
        return [message(NLMSG_DONE, NLM_F_MULTI, seq, struct.pack("=i", -95))]   # EOPNOTSUPP
    with pytest.raises(netlink.NetlinkRefused, match="dumping neighbours: Operation not "
                                                     "supported"):
        rtnl_on(FakeKernel(answer)).neighbours(7)

    def refused(data):
        ((typ, _f, seq, body),) = split(data)
        return [err(seq, 22, tlvs=nla(NLMSGERR_ATTR_MSG, b"Invalid header for neighbor dump\0"),
                    req_type=typ, req_len=16 + len(body))]
    with pytest.raises(netlink.NetlinkRefused, match="dumping the fdb: Invalid header for "
                                                     "neighbor dump"):
        rtnl_on(FakeKernel(refused)).fdb(7)


# --- notifications ----------------------------------------------------------------------------

def events_on(*datagrams):
    """An Events whose socket holds these kernel notifications (a datagram socketpair:
    one recv, one notification datagram, as netlink)."""
    ev = netlink.Events()
    ev.sock.close()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for d in datagrams:
        b.send(d)
    b.close()
    a.setblocking(False)
    ev.sock = a
    return ev


def test_notifications_about_our_device_are_drift_and_others_are_not():
    mac = nla(NDA_LLADDR, bytes.fromhex("5a0c71865911"))
    ev = events_on(
        message(RTM_NEWLINK, 0, 0, ifinfo(7)),
        message(RTM_DELNEIGH, 0, 0, ndm(AF_BRIDGE, 7, NUD_PERMANENT, NTF_SELF) + mac
              + nla(NDA_DST, ip4("192.168.2.142"))),
        message(RTM_DELADDR, 0, 0, ifa(AF_INET, 32, 7) + nla(IFA_LOCAL, ip4("10.244.0.0"))),
        # the local table's route for our address (table 255): the kernel's, not drift
        kernel_route(0, nla(RTA_TABLE, u32(255)), nla(RTA_DST, ip4("10.244.0.0")),
                     nla(RTA_OIF, u32(7)), dst_len=32, table=255, proto=PROTO_KERNEL,
                     scope=254, rtype=2)[0],
        # the underlay's ARP churn (ifindex 3 is watched for its link, not its neighbours)
        message(RTM_NEWNEIGH, 0, 0, ndm(AF_INET, 3, NUD_REACHABLE) + nla(NDA_DST, ip4(
            "192.168.1.213")) + mac))
    try:
        assert ev.drain({7, 3}, None, {7}) == (True, [
            "link changed", f"fdb {MAC} dst 192.168.2.142 deleted", "address 10.244.0.0/32 deleted"])
    finally:
        ev.close()
    ev = events_on(kernel_route(0, nla(RTA_TABLE, u32(255)), nla(RTA_DST, ip4("10.244.0.0")),
                                nla(RTA_OIF, u32(7)), dst_len=32, table=255)[0],
                   message(RTM_NEWNEIGH, 0, 0, ndm(AF_INET, 3, NUD_STALE)
                         + nla(NDA_DST, ip4("192.168.1.213")) + mac))
    try:
        assert ev.drain({7, 3}, None, {7}) == (False, [])
    finally:
        ev.close()


def test_notifications_name_the_drift_and_skip_echoes():
    add = nlmsg.encode(Op("route", "set", "10.244.1.0/24", "10.244.1.0"), 7, 1)
    ((typ, _f, _s, _b),) = split(add)
    assert netlink._event(add, typ, 16, len(add), {7}, None) == (True, "route 10.244.1.0/24 changed")
    # our own change coming back: nothing to repair, so no pass
    assert netlink._event(add, typ, 16, len(add), {7}, lambda e: True) == (False, None)
    assert netlink._event(add, typ, 16, len(add), {8}, None) == (False, None)
    gone = nlmsg.encode(Op("neigh", "del", "10.244.1.0"), 7, 2)
    assert netlink._event(gone, RTM_DELNEIGH, 16, len(gone), {7}, lambda e: True) == (
        True, "neigh 10.244.1.0 deleted")



# --- the decoders, on edge cases the kernel produces ---------------------------------------------

def test_an_empty_attribute_does_not_end_the_message():
    """A flag attribute (NLA_FLAG) is 4 bytes, header only; the attributes behind it count.
    A zero-length attribute, by contrast, is malformed: reading stops there."""
    flag = nla(0x0F, b"")
    msg = kernel_neigh(RTM_NEWNEIGH, AF_INET, 7, NUD_PERMANENT, flag,
                       nla(NDA_DST, ip4("10.244.1.0")), nla(NDA_LLADDR, MAC_BYTES))
    assert nlmsg.decode_neigh(*msg, 7)[1] == NeighEntry("10.244.1.0", MAC, NUD_PERMANENT)
    broken = kernel_neigh(RTM_NEWNEIGH, AF_INET, 7, NUD_PERMANENT, struct.pack("=HH", 0, 0),
                          nla(NDA_DST, ip4("10.244.1.0")))
    assert nlmsg.decode_neigh(*broken, 7) == (AF_INET, None)


def test_a_message_decodes_the_same_wherever_it_sits_in_the_buffer():
    """The decoders take (buffer, payload offset, end): a payload at offset 0, or behind other
    bytes, decodes as it does right behind its nlmsghdr."""
    body = rtm(AF_INET, 24, RT_TABLE_MAIN, PROTO_VTEP, SCOPE_UNIVERSE, RTN_UNICAST,
               RTNH_F_ONLINK) + nla(RTA_TABLE, u32(254)) + nla(RTA_DST, ip4("10.244.1.0")) \
        + nla(RTA_PRIORITY, u32(20)) + nla(RTA_GATEWAY, ip4("10.244.1.0")) + nla(RTA_OIF, u32(7))
    want = (7, 254, RouteEntry("10.244.1.0/24", "10.244.1.0", True, 20, 0, PROTO_VTEP,
                               SCOPE_UNIVERSE, RTN_UNICAST))
    assert nlmsg.decode_route(body, 0, len(body)) == want
    # behind bytes that read as attributes (type 1, RTA_DST) if taken for them
    junk = nla(RTA_DST, ip4("192.0.2.99")) + nla(RTA_OIF, u32(99)) + bytes(4)
    assert nlmsg.decode_route(junk + body, len(junk), len(junk) + len(body)) == want


def test_a_default_route_has_no_rta_dst_and_is_0_0_0_0_slash_0():
    """fib_dump_info leaves RTA_DST out when rtm_dst_len is 0."""
    default = kernel_route(0, nla(RTA_TABLE, u32(254)), nla(RTA_GATEWAY, ip4("192.168.1.1")),
                           nla(RTA_OIF, u32(3)), dst_len=0, proto=PROTO_BOOT)
    assert nlmsg.decode_route(*default) == (3, 254, RouteEntry(
        "0.0.0.0/0", "192.168.1.1", False, 0, 0, PROTO_BOOT, SCOPE_UNIVERSE, RTN_UNICAST))


def test_an_address_message_without_an_address_is_none():
    bare = message(RTM_NEWADDR, 0, 0, ifa(AF_INET, 24, 7) + nla(IFA_LABEL, b"vxlan0\0"))
    assert nlmsg.decode_addr(bare, 16, len(bare)) is None


def test_a_refusal_without_text_is_named_by_its_errno():
    assert nlmsg.describe_errno(errno.EEXIST) == "File exists"
    assert nlmsg.describe_errno(errno.EEXIST, "") == "File exists"
    assert nlmsg.describe_errno(errno.EINVAL, "Nexthop has invalid gateway") == \
        "Nexthop has invalid gateway"


def test_an_error_reads_its_own_header_wherever_it_sits_in_the_datagram():
    """An ack (no TLVs) followed by a refusal with extended-ack text: the second's flags say
    TLVs follow, whatever the first's say."""
    first = err(1300, 0)
    second = err(1301, errno.EINVAL, tlvs=nla(NLMSGERR_ATTR_MSG, b"Invalid prefix\0"))
    data = first + second
    assert nlmsg.parse_error(data, len(first) + 16, len(data)) == (22, 1301, "Invalid prefix")


def test_extended_ack_text_is_kept_whole_and_bad_utf8_does_not_raise():
    """Only the terminating NUL goes; text the kernel built from a device name (any bytes)
    is shown with a replacement character rather than failing the pass."""
    tail = err(1302, errno.EINVAL, tlvs=nla(NLMSGERR_ATTR_MSG, b"Unknown device type XX\0"))
    assert nlmsg.parse_error(tail, 16, len(tail))[2] == "Unknown device type XX"
    raw = err(1303, errno.ENODEV, tlvs=nla(NLMSGERR_ATTR_MSG, b"no device vx\xff\0"))
    assert nlmsg.parse_error(raw, 16, len(raw))[2] == "no device vx\ufffd"


# --- the requests, byte for byte ----------------------------------------------------------------

def test_a_route_delete_names_its_nexthop_object_and_metric_byte_for_byte():
    """RTA_NH_ID instead of RTA_OIF/RTA_GATEWAY (the kernel refuses both together), and the
    metric, each a 4-byte attribute (nla_len 8)."""
    r = RouteEntry("10.9.0.0/16", None, False, 100, 0x10, PROTO_BOOT, SCOPE_UNIVERSE,
                   RTN_UNICAST, nh_id=77)
    data = nlmsg.encode(Op("route", "del", r.dst, None, route=r), 7, 60)
    assert data == message(RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK, 60,
                         rtm(AF_INET, 16, RT_TABLE_MAIN, PROTO_BOOT, SCOPE_UNIVERSE, RTN_UNICAST,
                             tos=0x10)
                         + nla(RTA_DST, ip4("10.9.0.0")) + nla(RTA_TABLE, u32(RT_TABLE_MAIN))
                         + nla(RTA_NH_ID, u32(77)) + nla(RTA_PRIORITY, u32(100)))


@pytest.mark.parametrize("table, rtm_table", [(255, 255), (256, RT_TABLE_UNSPEC),
                                              (1000, RT_TABLE_UNSPEC)])
def test_a_route_delete_in_a_table_above_255_puts_it_in_rta_table_only(table, rtm_table):
    """rtm_table is a u8: iproute2 sends RT_TABLE_UNSPEC there for a table >= 256 and the
    real id in RTA_TABLE (which the kernel prefers)."""
    r = RouteEntry("10.9.0.0/16", "10.244.1.0", False, 0, 0, PROTO_STATIC, SCOPE_UNIVERSE,
                   RTN_UNICAST, table=table)
    data = nlmsg.encode(Op("route", "del", r.dst, r.gateway, route=r), 7, 61)
    assert data == message(RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK, 61,
                         rtm(AF_INET, 16, rtm_table, PROTO_STATIC, SCOPE_UNIVERSE, RTN_UNICAST)
                         + nla(RTA_DST, ip4("10.9.0.0")) + nla(RTA_TABLE, u32(table))
                         + nla(RTA_OIF, u32(7)) + nla(RTA_GATEWAY, ip4("10.244.1.0")))


def test_an_unknown_kind_or_action_is_refused_by_name():
    with pytest.raises(ValueError, match="bridge"):
        nlmsg.encode(Op("bridge", "set", MAC, "192.168.2.142"), 7, 1)
    with pytest.raises(ValueError, match="replace"):
        nlmsg.encode(Op("route", "replace", "10.244.1.0/24", "10.244.1.0"), 7, 1)


def test_a_route_is_named_with_every_field_iproute2_prints():
    """print_route's words: type, dst, nhid, tos, via, dev, proto, scope, src, metric, then
    the nexthop flags (onlink); a number it has no name for is printed as the number. The
    order is `ip route`'s (iproute2 6.1: "192.0.2.0/24 tos 0x10 via 10.1.1.1 dev d0 proto
    118 metric 5 onlink", "198.51.100.0/24 nhid 77 tos 0x10 via ...")."""
    r = RouteEntry("192.0.2.0/24", "192.168.1.213", True, 100, 0x10, PROTO_STATIC, 100, 99)
    assert r.text("eth0") == ("99 192.0.2.0/24 tos 0x10 via 192.168.1.213 dev eth0 "
                              "proto static scope 100 metric 100 onlink")
    assert RouteEntry("198.51.100.0/24", None, True, 0, 0x10, PROTO_BOOT, SCOPE_UNIVERSE,
                      RTN_UNICAST, nh_id=77).text() == \
        "198.51.100.0/24 nhid 77 tos 0x10 proto boot onlink"
    nh = RouteEntry("10.9.0.0/16", None, False, 0, 0, PROTO_BOOT, SCOPE_UNIVERSE, RTN_UNICAST,
                    nh_id=77)
    assert nh.text(hide_proto=PROTO_BOOT) == "10.9.0.0/16 nhid 77"
    mp = RouteEntry("10.8.0.0/16", None, False, 0, 0, PROTO_BOOT, SCOPE_UNIVERSE, RTN_UNICAST,
                    multipath=True)
    assert mp.text() == "10.8.0.0/16 multipath proto boot"


# --- the sockets themselves (real rtnetlink sockets: opening one needs no privilege) -------------

def test_the_request_socket_asks_for_capped_extended_acks_and_strict_dumps():
    """NETLINK_CAP_ACK (acks echo only the header: a batch of 200 fits), NETLINK_EXT_ACK
    (the kernel's reason in words), NETLINK_GET_STRICT_CHK (dumps filtered by device); bound
    to a port the kernel picks, in no multicast group (notifications would pile up behind
    the acks)."""
    rt = netlink.Rtnl()
    try:
        for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK):
            assert rt.sock.getsockopt(SOL_NETLINK, opt) == 1, opt
        assert rt.sock.getsockname()[1] == 0
        assert rt.sock.getsockopt(socket.SOL_SOCKET, SO_RCVBUF) >= 2 * min(
            8 << 20, int(open("/proc/sys/net/core/rmem_max").read()))
    finally:
        rt.close()


def test_the_event_socket_joins_link_neighbour_address_and_route_groups_without_blocking():
    ev = netlink.Events()
    try:
        # both families' address and route groups: an IPv6 overlay's drift wakes a pass
        assert ev.sock.getsockname()[1] == (RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_IFADDR
                                            | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR
                                            | RTMGRP_IPV6_ROUTE)
        assert ev.sock.getblocking() is False
        assert ev.fileno() == ev.sock.fileno()
    finally:
        ev.close()


def test_several_sockets_live_side_by_side():
    """The daemon holds a request socket and an event socket, and `vtep down` opens another:
    each gets a port of its own (port 0: the kernel chooses)."""
    socks = [netlink.Rtnl(), netlink.Rtnl(), netlink.Events(), netlink.Events()]
    try:
        ports = [s.sock.getsockname()[0] for s in socks]
        assert len(set(ports)) == 4
    finally:
        for s in socks:
            s.close()


class Unprivileged:
    """A real netlink socket as a process without CAP_NET_ADMIN sees it: SO_RCVBUFFORCE is
    refused (sock_setsockopt: EPERM), everything else goes through."""

    def __init__(self, real):
        self.real = real

    def setsockopt(self, level, opt, value):
        if (level, opt) == (socket.SOL_SOCKET, SO_RCVBUFFORCE):
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return self.real.setsockopt(level, opt, value)

    def __getattr__(self, name):
        return getattr(self.real, name)


@pytest.mark.parametrize("cls", [netlink.Rtnl, netlink.Events])
def test_without_net_admin_the_receive_buffer_is_asked_for_within_rmem_max(monkeypatch, cls):
    opened = []
    real_socket = socket.socket

    def unprivileged(*args):
        s = Unprivileged(real_socket(*args))
        opened.append(s)
        return s
    monkeypatch.setattr(socket, "socket", unprivileged)
    nl = cls()
    monkeypatch.undo()
    try:
        (s,) = opened
        # SO_RCVBUF is capped at rmem_max, and the kernel doubles what it grants
        want = 2 * min(8 << 20, int(open("/proc/sys/net/core/rmem_max").read()))
        assert s.real.getsockopt(socket.SOL_SOCKET, SO_RCVBUF) == want
    finally:
        nl.close()


@pytest.mark.parametrize("cls", [netlink.Rtnl, netlink.Events])
def test_no_rtnetlink_socket_is_a_one_line_refusal(monkeypatch, cls):
    def refused(*args):
        raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))
    monkeypatch.setattr(socket, "socket", refused)
    with pytest.raises(netlink.NetlinkRefused) as e:
        cls()
    assert str(e.value) == ("cannot open an rtnetlink socket: Address family not supported "
                            "by protocol")


# --- dumps: what the kernel answers, read back into entries -------------------------------------

def dump_of(*datagrams_of_bodies, typ=RTM_NEWNEIGH, done_len=4):
    """An answer to one dump request: each argument is one datagram of entry bodies (the
    kernel fills an skb, then the next), and NLMSG_DONE behind the last entries (its 4-byte
    error code, or none with done_len=0)."""
    def answer(data):
        ((_t, _f, seq, _b),) = split(data)
        out = [b"".join(message(typ, NLM_F_MULTI, seq, b) for b in bodies)
               for bodies in datagrams_of_bodies]
        end = done(seq) if done_len else message(NLMSG_DONE, NLM_F_MULTI, seq, b"")
        out[-1] += end
        return out
    return answer


def neigh(ip, ifindex=7, mac=MAC_BYTES, state=NUD_PERMANENT, family=AF_INET):
    return ndm(family, ifindex, state) + nla(NDA_DST, ip4(ip)) \
        + (nla(NDA_LLADDR, mac) if mac else b"") + nla(NDA_CACHEINFO, bytes(16))


def remote(mac, dst, ifindex=7, *extra):
    return ndm(AF_BRIDGE, ifindex, NUD_PERMANENT, NTF_SELF) + nla(NDA_LLADDR, mac) \
        + nla(NDA_DST, ip4(dst)) + b"".join(extra)


def test_a_neighbour_dump_keeps_our_devices_ipv4_entries_keyed_by_address():
    """A kernel before 4.20 ignores the NDA_IFINDEX filter and dumps every device's
    neighbours: another device's entries are left out here. Entries of different sizes
    (with and without a link-layer address) share a datagram."""
    answer = dump_of([neigh("10.244.1.0"), neigh("10.244.2.0", mac=None, state=NUD_FAILED),
                      neigh("192.168.1.1", ifindex=3, state=NUD_REACHABLE)],
                     [neigh("10.244.3.0", state=NUD_STALE)])
    assert rtnl_on(FakeKernel(answer)).neighbours(7) == {
        "10.244.1.0": NeighEntry("10.244.1.0", MAC, NUD_PERMANENT),
        "10.244.2.0": NeighEntry("10.244.2.0", None, NUD_FAILED),
        "10.244.3.0": NeighEntry("10.244.3.0", MAC, NUD_STALE)}


def test_an_fdb_dump_keeps_our_devices_remotes_in_the_kernels_order():
    """The device's own addresses (no NDA_DST) and another device's entries are not
    remotes of ours; two remotes of one MAC (head-end replication) both are."""
    own = ndm(AF_BRIDGE, 7, NUD_PERMANENT, NTF_SELF) + nla(NDA_LLADDR, bytes.fromhex(
        "06b33177abd9")) + nla(NDA_MASTER, u32(5))
    zero = bytes(6)
    answer = dump_of([remote(zero, "192.168.2.142"), own,
                      remote(MAC_BYTES, "192.168.9.9", 7, nla(NDA_PORT, b"\x21\x18"))],
                     [remote(zero, "192.168.3.33"), remote(MAC_BYTES, "192.168.4.4", 8)])
    assert rtnl_on(FakeKernel(answer)).fdb(7) == (
        FdbEntry("00:00:00:00:00:00", "192.168.2.142", NUD_PERMANENT),
        FdbEntry(MAC, "192.168.9.9", NUD_PERMANENT, port=8472),
        FdbEntry("00:00:00:00:00:00", "192.168.3.33", NUD_PERMANENT))


def route(dst, gw=None, oif=7, prio=0, table=RT_TABLE_MAIN, proto=PROTO_VTEP, tos=0,
          family=AF_INET, dst_len=24, flags=RTNH_F_ONLINK, extra=b""):
    """An RTM_NEWROUTE body as fib_dump_info writes it."""
    addr = socket.inet_pton(family, dst)
    body = rtm(family, dst_len, RT_TABLE_COMPAT if table > 255 else table, proto,
               SCOPE_UNIVERSE, RTN_UNICAST, flags, tos) + nla(RTA_TABLE, u32(table)) \
        + nla(RTA_DST, addr)
    if prio:
        body += nla(RTA_PRIORITY, u32(prio))
    if gw:
        body += nla(RTA_GATEWAY, ip4(gw))
    if oif is not None:
        body += nla(RTA_OIF, u32(oif))
    return body + extra


def ours(dst, gw, prio=0, tos=0):
    return RouteEntry(dst, gw, True, prio, tos, PROTO_VTEP, SCOPE_UNIVERSE, RTN_UNICAST)


def test_a_route_dump_keeps_our_devices_main_table_ipv4_routes():
    """Without strict checking the kernel dumps every table and device: routes of another
    device, of another table (the local table, a table above 255), IPv6 and multipath
    routes are none of ours."""
    hop = struct.pack("=HBBi", 16, 0, 0, 7) + nla(RTA_GATEWAY, ip4("10.244.1.0"))
    answer = dump_of([route("10.244.1.0", "10.244.1.0"), route("10.244.2.0", "10.244.2.0", oif=3),
                      route("10.244.3.0", "10.244.3.0", table=RT_TABLE_LOCAL),
                      route("10.244.4.0", "10.244.4.0", table=1000)],
                     [route("fd00::", oif=7, family=AF_INET6, dst_len=64, flags=0),
                      route("10.244.5.0", oif=None, flags=0, extra=nla(RTA_MULTIPATH, hop)),
                      route("10.244.6.0", "10.244.6.0", prio=20, tos=0x10)], typ=RTM_NEWROUTE)
    assert rtnl_on(FakeKernel(answer)).routes(7) == {
        ("10.244.1.0/24", 0, 0): ours("10.244.1.0/24", "10.244.1.0"),
        ("10.244.6.0/24", 0x10, 20): ours("10.244.6.0/24", "10.244.6.0", 20, 0x10)}


def test_routes_appended_behind_ours_get_keys_of_their_own_in_order():
    """`ip route append` puts a second route with the same (dst, tos, metric) behind the
    first; the kernel uses the first. The later ones are keyed (dst, tos, metric, n), n from
    1: never in the plan, so a pass removes them and keeps the first."""
    answer = dump_of([route("10.244.1.0", "10.244.1.0"), route("10.244.1.0", "10.244.9.1"),
                      route("10.244.1.0", "10.244.9.2"), route("10.244.1.0", "10.244.9.3")],
                     typ=RTM_NEWROUTE)
    got = rtnl_on(FakeKernel(answer)).routes(7)
    assert got == {("10.244.1.0/24", 0, 0): ours("10.244.1.0/24", "10.244.1.0"),
                   ("10.244.1.0/24", 0, 0, 1): ours("10.244.1.0/24", "10.244.9.1"),
                   ("10.244.1.0/24", 0, 0, 2): ours("10.244.1.0/24", "10.244.9.2"),
                   ("10.244.1.0/24", 0, 0, 3): ours("10.244.1.0/24", "10.244.9.3")}


def test_main_routes_names_every_devices_route_for_the_asked_keys():
    """After an EEXIST: which route is in the way, on any device, in the kernel's order. The
    request has no RTA_OIF (every device), only the main table."""
    sent = []

    def answer(data):
        sent.append(split(data)[0])
        return dump_of([route("10.244.1.0", "192.168.1.1", oif=3, proto=PROTO_BOOT, flags=0),
                        route("10.244.1.0", "10.244.1.0"), route("10.244.2.0", "10.244.2.0"),
                        route("10.244.1.0", "10.244.9.9", table=RT_TABLE_LOCAL)],
                       typ=RTM_NEWROUTE)(data)
    got = rtnl_on(FakeKernel(answer)).main_routes([("10.244.1.0/24", 0, 0)])
    assert got == {("10.244.1.0/24", 0, 0): [
        (3, RouteEntry("10.244.1.0/24", "192.168.1.1", False, 0, 0, PROTO_BOOT, SCOPE_UNIVERSE,
                       RTN_UNICAST)),
        (7, ours("10.244.1.0/24", "10.244.1.0"))]}
    ((typ, flags, _seq, body),) = sent
    assert (typ, flags) == (RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP)
    assert body == rtm(AF_INET, 0, RT_TABLE_MAIN, 0, 0, 0) + nla(RTA_TABLE, u32(RT_TABLE_MAIN))


def test_read_is_the_three_tables_of_one_device():
    """Each dump asks for the device (NDA_IFINDEX, RTA_OIF); entries of device 3 that come
    anyway (a kernel without strict checking) are left out."""
    asked = []

    def answer(data):
        ((typ, _f, _s, body),) = split(data)
        asked.append(body[-4:])
        if typ == RTM_GETROUTE:
            return dump_of([route("10.244.1.0", "10.244.1.0"),
                            route("192.168.1.0", oif=3, proto=PROTO_KERNEL, flags=0)],
                           typ=RTM_NEWROUTE)(data)
        if body[0] == AF_BRIDGE:
            return dump_of([remote(MAC_BYTES, "192.168.2.142"),
                            remote(MAC_BYTES, "192.168.7.7", 3)])(data)
        return dump_of([neigh("10.244.1.0"), neigh("192.168.1.1", ifindex=3)])(data)
    got = rtnl_on(FakeKernel(answer)).read(7)
    assert got == nlmsg.Realised(
        {"10.244.1.0": NeighEntry("10.244.1.0", MAC, NUD_PERMANENT)},
        (FdbEntry(MAC, "192.168.2.142", NUD_PERMANENT),),
        {("10.244.1.0/24", 0, 0): ours("10.244.1.0/24", "10.244.1.0")})
    # neighbours and fdb end with NDA_IFINDEX 7; the route dump with RTA_OIF 7, RTA_TABLE 254
    assert asked == [u32(7), u32(7), u32(RT_TABLE_MAIN)]


class Broken(FakeKernel):
    """A socket whose every read fails with `error` (the device's namespace went away...)."""

    def __init__(self, error):
        super().__init__(lambda data: [error])


def test_a_socket_error_while_reading_names_what_was_read():
    ebadf = OSError(errno.EBADF, os.strerror(errno.EBADF))
    with pytest.raises(netlink.NetlinkRefused) as e:
        rtnl_on(Broken(ebadf)).read(7)
    assert str(e.value) == "reading the entries of ifindex 7: Bad file descriptor"
    with pytest.raises(netlink.NetlinkRefused) as e:
        rtnl_on(Broken(ebadf)).main_routes([("10.244.1.0/24", 0, 0)])
    assert str(e.value) == "reading the main routing table: Bad file descriptor"


def test_a_dump_skips_what_is_not_its_own_and_ends_at_nlmsg_done():
    """A late answer to an earlier request (another sequence number) before the entries, an
    ack in the middle, an NLMSG_DONE without its error code (header only): the entries count,
    and what follows NLMSG_DONE is not read."""
    def answer(data):
        ((_t, _f, seq, _b),) = split(data)
        return [message(RTM_NEWNEIGH, NLM_F_MULTI, seq - 1, neigh("10.244.9.9"))
                + message(RTM_NEWNEIGH, NLM_F_MULTI, seq, neigh("10.244.1.0"))
                + err(seq, 0, req_type=RTM_GETNEIGH)
                + message(RTM_NEWNEIGH, NLM_F_MULTI, seq, neigh("10.244.2.0"))
                + message(NLMSG_DONE, NLM_F_MULTI, seq, b"")
                + message(RTM_NEWNEIGH, NLM_F_MULTI, seq, neigh("10.244.3.0"))]
    assert sorted(rtnl_on(FakeKernel(answer)).neighbours(7)) == ["10.244.1.0", "10.244.2.0"]


def test_a_dump_ends_at_an_nlmsg_done_without_error_code_ending_the_datagram():
    """An NLMSG_DONE of 16 bytes (header only) last in its datagram still ends the dump, as
    a success."""
    answer = dump_of([neigh("10.244.1.0")], [neigh("10.244.2.0")], done_len=0)
    assert sorted(rtnl_on(FakeKernel(answer)).neighbours(7)) == ["10.244.1.0", "10.244.2.0"]


def test_a_dump_ended_with_an_errno_or_refused_without_text_names_the_errno():
    """NLMSG_DONE's payload is the dump's error (-errno); an NLMSG_ERROR without
    extended-ack text is named by its errno."""
    def ended(code):
        def answer(data):
            ((_t, _f, seq, _b),) = split(data)
            return [message(RTM_NEWROUTE, NLM_F_MULTI, seq, route("10.244.1.0", "10.244.1.0"))
                    + done(seq, code)]
        return answer
    with pytest.raises(netlink.NetlinkRefused) as e:
        rtnl_on(FakeKernel(ended(errno.EPERM))).routes(7)
    assert str(e.value) == "dumping routes: Operation not permitted"

    def refused(data):
        ((typ, _f, seq, body),) = split(data)
        return [err(seq, errno.EINVAL, req_type=typ, req_len=16 + len(body))]
    with pytest.raises(netlink.NetlinkRefused) as e:
        rtnl_on(FakeKernel(refused)).routes(7)
    assert str(e.value) == "dumping routes: Invalid argument"


def test_a_redone_dump_sends_the_same_request_under_a_new_sequence_number():
    rounds = []

    def answer(data):
        ((typ, flags, seq, body),) = split(data)
        rounds.append((typ, flags, seq, body, len(data)))
        return dump_of([neigh("10.244.1.0")])(data) if len(rounds) > 2 else [
            message(RTM_NEWNEIGH, NLM_F_MULTI | NLM_F_DUMP_INTR, seq, neigh("10.244.1.0"))
            + done(seq)]
    assert list(rtnl_on(FakeKernel(answer)).neighbours(7)) == ["10.244.1.0"]
    assert len(rounds) == 3
    assert len({r[2] for r in rounds}) == 3                     # three sequence numbers
    assert {(r[0], r[1], r[3], r[4]) for r in rounds} == {      # one request
        (RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, ndm(AF_INET, 0, 0) + nla(NDA_IFINDEX, u32(7)),
         16 + 12 + 8)}


def test_a_long_dump_lets_the_data_path_run_between_reads_and_every_1000_entries():
    """idle() (the userspace VTEP forwarding what waits) once per datagram read, and once
    before each slice of 1,000 decoded entries: 2,500 neighbours in 5 datagrams of 500 give
    5 + 3 calls."""
    bodies = [neigh(f"10.{i // 250}.{i % 250}.1") for i in range(2500)]
    answer = dump_of(*(bodies[i:i + 500] for i in range(0, 2500, 500)))
    fake = FakeKernel(answer)
    rt = rtnl_on(fake)
    calls = []
    rt.idle = lambda: calls.append(len(fake.queue))
    got = rt.neighbours(7)
    assert len(got) == 2500
    assert calls == [4, 3, 2, 1, 0, 0, 0, 0]    # datagrams still unread at each call


# --- changes: batches, and every refusal mapped back to its entry -------------------------------

def neigh_ops(n):
    return [Op("neigh", "set", f"10.{i // 250}.{i % 250}.0", MAC) for i in range(n)]


def test_changes_go_200_to_a_sendmsg_and_each_refusal_comes_back_with_its_entry():
    """A batch's acks must fit the receive buffer: 450 changes are 3 sendmsg calls (200, 200,
    50), each answered before the next is sent; the refusals name their own entries, whatever
    batch they were in."""
    ops = neigh_ops(450)
    rt = rtnl_on(FakeKernel(lambda d: []))
    first = rt.seq + 1
    refuse = {first: (errno.EINVAL, ""), first + 250: (errno.ENODEV, "Device not found"),
              first + 449: (errno.EEXIST, "")}
    fake = FakeKernel(acks(refuse))
    rt.sock = fake
    batches = []
    rt.idle = lambda: batches.append((len(fake.sent), len(fake.queue)))
    assert rt.apply(ops, 7) == [(ops[0], errno.EINVAL, ""), (ops[250], errno.ENODEV,
                                                              "Device not found"),
                                (ops[449], errno.EEXIST, "")]
    assert [len(split(d)) for d in fake.sent] == [200, 200, 50]
    seqs = [seq for d in fake.sent for _t, _f, seq, _b in split(d)]
    assert seqs == list(range(first, first + 450))
    # the data path runs after each batch is acknowledged, before the next is sent
    assert batches == [(1, 0), (2, 0), (3, 0)]


def test_nothing_to_change_sends_nothing():
    fake = FakeKernel(acks())
    assert rtnl_on(fake).apply([], 7) == [] and fake.sent == []


def test_acks_are_read_until_each_change_has_its_own():
    """Acks come one to a datagram or several; a duplicate, an ack of another request and
    a message that is no ack at all are skipped without losing the acks behind them."""
    ops = neigh_ops(3)
    rt = rtnl_on(FakeKernel(lambda d: []))
    s = rt.seq + 1

    def answer(data):
        return [message(RTM_NEWNEIGH, 0, s, neigh("10.0.0.0")) + err(s, 0) + err(s + 1, 0),
                err(s, errno.EINVAL) + err(999, errno.EEXIST),
                err(s + 2, errno.EEXIST)]
    rt.sock = FakeKernel(answer)
    assert rt.apply(ops, 7) == [(ops[2], errno.EEXIST, "")]


def test_sequence_numbers_wrap_before_they_turn_negative():
    """netlink's seq is a u32 that tools print signed: after 0x7FFFFFF0 the count starts
    again low, and the acks still find their entries."""
    rt = rtnl_on(FakeKernel(lambda d: []))
    rt.seq = 0x7FFFFFF0 - 10
    ops = neigh_ops(30)

    def refuse_last(data):
        msgs = split(data)
        return acks({msgs[-1][2]: (errno.EEXIST, "")})(data)
    fake = FakeKernel(refuse_last)
    rt.sock = fake
    assert rt.apply(ops, 7) == [(ops[-1], errno.EEXIST, "")]
    seqs = [seq for _t, _f, seq, _b in split(fake.sent[0])]
    assert len(set(seqs)) == 30 and all(0 < q < 0x80000000 for q in seqs)


def test_a_failed_send_or_read_of_acks_is_a_one_line_refusal():
    fake = FakeKernel(acks())
    fake.send_error = OSError(errno.EMSGSIZE, os.strerror(errno.EMSGSIZE))
    with pytest.raises(netlink.NetlinkRefused) as e:
        rtnl_on(fake).apply(neigh_ops(3), 7)
    assert str(e.value) == "sending 3 changes: Message too long"
    # ENOBUFS: the kernel dropped acks; the next pass reads the state again anyway
    with pytest.raises(netlink.NetlinkRefused) as e:
        rtnl_on(Broken(OSError(errno.ENOBUFS, os.strerror(errno.ENOBUFS)))).apply(neigh_ops(3), 7)
    assert str(e.value) == ("netlink acknowledgements overflowed the socket buffer; the next "
                            "pass re-reads the state")
    with pytest.raises(netlink.NetlinkRefused) as e:
        rtnl_on(Broken(OSError(errno.EBADF, os.strerror(errno.EBADF)))).apply(neigh_ops(3), 7)
    assert str(e.value) == "reading acknowledgements: Bad file descriptor"


# --- notifications: which ones call for a pass, and why -------------------------------------------

def events_with(*pending):
    """An Events reading these notifications (datagrams, or errors to raise in turn)."""
    ev = netlink.Events()
    ev.sock.close()
    ev.sock = Notifications(*pending)
    return ev


def test_a_link_change_or_deletion_of_a_watched_device_calls_for_a_pass():
    ev = events_with(message(RTM_NEWLINK, 0, 0, ifinfo(7)), message(RTM_DELLINK, 0, 0, ifinfo(7)))
    assert ev.drain({7}) == (True, ["link changed", "link deleted"])
    assert events_with(message(RTM_NEWLINK, 0, 0, ifinfo(7))).drain({7}) == (True, ["link changed"])
    assert events_with(message(RTM_DELLINK, 0, 0, ifinfo(9))).drain({7}) == (False, [])


def addr(typ, ip, prefixlen=32, index=7):
    return message(typ, 0, 0, ifa(AF_INET, prefixlen, index) + nla(IFA_ADDRESS, ip4(ip))
                 + nla(IFA_LOCAL, ip4(ip)) + nla(IFA_LABEL, b"vxlan0\0"))


def test_address_notifications_name_the_address_and_skip_our_own_echo():
    planned = nlmsg.AddrEntry("10.244.0.0", 32)

    def echo(e):
        return e == planned
    assert events_with(addr(RTM_NEWADDR, "10.244.0.0")).drain({7}, echo) == (False, [])
    assert events_with(addr(RTM_NEWADDR, "10.244.0.0")).drain({7}) == (
        True, ["address 10.244.0.0/32 added"])
    assert events_with(addr(RTM_NEWADDR, "10.244.0.9", 24)).drain({7}, echo) == (
        True, ["address 10.244.0.9/24 added"])
    # a deletion is never an echo: the address is gone
    assert events_with(addr(RTM_DELADDR, "10.244.0.0")).drain({7}, echo) == (
        True, ["address 10.244.0.0/32 deleted"])
    assert events_with(addr(RTM_NEWADDR, "10.244.0.0", index=3)).drain({7}) == (False, [])
    # an IPv6 address not in the plan (a link-local one) on our device: a pass, named
    v6 = message(RTM_NEWADDR, 0, 0, ifa(AF_INET6, 64, 7)
               + nla(IFA_ADDRESS, socket.inet_pton(socket.AF_INET6, "fe80::1")))
    assert events_with(v6).drain({7}, echo) == (True, ["address fe80::1/64 added"])


def test_neighbour_and_fdb_notifications_name_the_entry_and_skip_our_own_echo():
    planned_nb = NeighEntry("10.244.1.0", MAC, NUD_PERMANENT)
    planned_fdb = FdbEntry(MAC, "192.168.2.142", NUD_PERMANENT)

    def echo(e):
        return e in (planned_nb, planned_fdb)
    nb = message(RTM_NEWNEIGH, 0, 0, neigh("10.244.1.0"))
    fdb = message(RTM_NEWNEIGH, 0, 0, remote(MAC_BYTES, "192.168.2.142"))
    stale = message(RTM_NEWNEIGH, 0, 0, neigh("10.244.1.0", state=NUD_STALE))
    assert events_with(nb, fdb).drain({7}, echo) == (False, [])
    assert events_with(nb, fdb).drain({7}) == (
        True, ["neigh 10.244.1.0 changed", f"fdb {MAC} dst 192.168.2.142 changed"])
    assert events_with(stale).drain({7}, echo) == (True, ["neigh 10.244.1.0 changed"])
    gone = message(RTM_DELNEIGH, 0, 0, neigh("10.244.1.0"))
    assert events_with(gone).drain({7}, echo) == (True, ["neigh 10.244.1.0 deleted"])
    # the removal of an entry the plan does not have (a pass removing a stale one) needs
    # no pass: there is nothing to put back
    stale_gone = message(RTM_DELNEIGH, 0, 0, neigh("10.244.9.0"))
    assert events_with(stale_gone).drain({7}, echo) == (False, [])
    fdb_gone = message(RTM_DELNEIGH, 0, 0, remote(MAC_BYTES, "192.168.9.9"))
    assert events_with(fdb_gone).drain({7}, echo) == (False, [])
    assert events_with(fdb_gone).drain({7}) == (True, [f"fdb {MAC} dst 192.168.9.9 deleted"])


def test_route_notifications_name_the_route_and_skip_our_own_echo():
    planned = ours("10.244.1.0/24", "10.244.1.0")

    def echo(e):
        return e == planned
    add = message(RTM_NEWROUTE, 0, 0, route("10.244.1.0", "10.244.1.0"))
    other = message(RTM_NEWROUTE, 0, 0, route("10.244.1.0", "10.244.9.9"))
    assert events_with(add).drain({7}, echo) == (False, [])
    assert events_with(other).drain({7}, echo) == (True, ["route 10.244.1.0/24 changed"])
    assert events_with(add).drain({7}) == (True, ["route 10.244.1.0/24 changed"])
    gone = message(RTM_DELROUTE, 0, 0, route("10.244.1.0", "10.244.1.0"))
    assert events_with(gone).drain({7}, echo) == (True, ["route 10.244.1.0/24 deleted"])
    stale_gone = message(RTM_DELROUTE, 0, 0, route("10.244.9.0", "10.244.9.0"))
    assert events_with(stale_gone).drain({7}, echo) == (False, [])
    elsewhere = message(RTM_NEWROUTE, 0, 0, route("10.244.1.0", "10.244.1.0", table=100))
    assert events_with(elsewhere).drain({7}) == (False, [])
    # the prefix route IPv6 adds with our /128 (proto kernel, metric 256, main table): the
    # address's own notification counts, this one does not
    prefix = message(RTM_NEWROUTE, 0, 0, rtm(AF_INET6, 128, RT_TABLE_MAIN, PROTO_KERNEL,
                                             SCOPE_UNIVERSE, RTN_UNICAST)
                     + nla(RTA_DST, socket.inet_pton(socket.AF_INET6, "fd00:172:2::"))
                     + nla(RTA_PRIORITY, u32(256)) + nla(RTA_OIF, u32(7)))
    assert events_with(prefix).drain({7}) == (False, [])
    # an IPv6 route of ours deleted by hand: named
    gone6 = message(RTM_DELROUTE, 0, 0, rtm(AF_INET6, 64, RT_TABLE_MAIN, PROTO_VTEP,
                                            SCOPE_UNIVERSE, RTN_UNICAST, RTNH_F_ONLINK)
                    + nla(RTA_DST, socket.inet_pton(socket.AF_INET6, "fd00:172:2:1::"))
                    + nla(RTA_OIF, u32(7)))
    planned6 = RouteEntry("fd00:172:2:1::/64", None, True, 0, 0, PROTO_VTEP, SCOPE_UNIVERSE,
                          RTN_UNICAST)
    assert events_with(gone6).drain({7}, lambda e: e == planned6) == (
        True, ["route fd00:172:2:1::/64 deleted"])


def test_lost_notifications_call_for_a_pass_and_reading_goes_on():
    """ENOBUFS: the kernel dropped notifications, so anything may have changed; those still
    queued are read too."""
    enobufs = OSError(errno.ENOBUFS, os.strerror(errno.ENOBUFS))
    ev = events_with(enobufs, message(RTM_DELLINK, 0, 0, ifinfo(7)))
    assert ev.drain({7}) == (True, ["lost netlink notifications", "link deleted"])
    assert ev.sock.read == 1
    # lost notifications alone, or beside others that concern nothing of ours
    assert events_with(enobufs).drain({7}) == (True, ["lost netlink notifications"])
    assert events_with(enobufs, message(RTM_DELLINK, 0, 0, ifinfo(9))).drain({7}) == (
        True, ["lost netlink notifications"])
    ebadf = OSError(errno.EBADF, os.strerror(errno.EBADF))
    with pytest.raises(netlink.NetlinkRefused) as e:
        events_with(ebadf).drain({7})
    assert str(e.value) == "reading netlink notifications: Bad file descriptor"


def test_a_burst_names_its_first_eight_distinct_reasons():
    burst = [message(RTM_DELNEIGH, 0, 0, neigh(f"10.244.{i}.0")) for i in range(12)]
    burst.insert(1, burst[0])
    relevant, reasons = events_with(*burst).drain({7})
    assert relevant and reasons == [f"neigh 10.244.{i}.0 deleted" for i in range(8)]


def test_a_burst_of_notifications_lets_the_data_path_run_every_1000_reads():
    """2,500 notifications (our own pass coming back): idle() twice, each time after
    1,000 reads or fewer, never more than that without it."""
    burst = [message(RTM_NEWNEIGH, 0, 0, neigh("10.244.1.0"))] * 2500
    ev = events_with(*burst)
    calls = []
    ev.idle = lambda: calls.append(ev.sock.read)
    assert ev.drain({7}, lambda e: True) == (False, [])
    assert ev.sock.read == 2500
    assert len(calls) == 2 and 998 <= calls[0] <= 1000 and calls[1] - calls[0] == 1000
    # without a data path to run (the kernel path) there is no idle() to call
    assert events_with(*burst).drain({7}, lambda e: True) == (False, [])


def test_an_fdb_set_is_made_as_planned_even_beside_the_realised_remote():
    """Only a delete repeats the realised remote's overrides (to name it); a set carrying one
    still makes the remote the plan wants, with the device's port and VNI."""
    stale = FdbEntry(MAC, "192.168.2.142", NUD_PERMANENT, port=8472, vni=11)
    data = nlmsg.encode(Op("fdb", "set", MAC, "192.168.2.142", fdb=stale), 7, 62)
    assert data == message(RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
                         62, ndm(AF_BRIDGE, 7, NUD_PERMANENT, NTF_SELF)
                         + nla(NDA_LLADDR, MAC_BYTES) + nla(NDA_DST, ip4("192.168.2.142")))


# --- IPv6 (a dual-stack or IPv6-only overlay) --------------------------------------------------

def ip6(text):
    return socket.inet_pton(socket.AF_INET6, text)


def test_an_ipv6_neighbour_set_and_delete_byte_for_byte():
    """AF_INET6 (10) and a 16-byte NDA_DST; the rest as IPv4's (neigh_add is per family)."""
    data = nlmsg.encode(Op("neigh", "set", "fd00:172:2:1::", MAC), 7, 50)
    assert data == bytes.fromhex(
        "3c000000" "1c00" "0505" "32000000" "00000000"      # nlmsghdr: 60, NEWNEIGH, flags, seq
        "0a000000" "07000000" "8000" "00" "00"              # ndmsg: AF_INET6, 7, PERMANENT
        "1400" "0100" "fd000172000200010000000000000000"    # NDA_DST
        "0a00" "0200" "5a0c71865911" "0000")                # NDA_LLADDR, padded
    data = nlmsg.encode(Op("neigh", "del", "fd00:172:2:1::"), 7, 51)
    assert data == message(RTM_DELNEIGH, NLM_F_REQUEST | NLM_F_ACK, 51,
                           ndm(AF_INET6, 7, 0) + nla(NDA_DST, ip6("fd00:172:2:1::")))


def test_an_ipv6_route_add_is_onlink_tagged_exclusive_and_names_no_metric():
    """As `ip -6 route add fd00:172:2:1::/64 via fd00:172:2:1:: dev X onlink proto 118`
    sends it: no RTA_PRIORITY, so the kernel gives it IPv6's 1024."""
    data = nlmsg.encode(Op("route", "set", "fd00:172:2:1::/64", "fd00:172:2:1::"), 7, 52)
    assert data == message(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                           52, rtm(AF_INET6, 64, RT_TABLE_MAIN, PROTO_VTEP, SCOPE_UNIVERSE,
                                   RTN_UNICAST, RTNH_F_ONLINK)
                           + nla(RTA_DST, ip6("fd00:172:2:1::")) + nla(RTA_OIF, u32(7))
                           + nla(RTA_GATEWAY, ip6("fd00:172:2:1::")))
    assert len(data) == 16 + 12 + 20 + 8 + 20   # nlmsghdr, rtmsg, RTA_DST, RTA_OIF, RTA_GATEWAY


def test_an_ipv6_route_delete_repeats_the_dumped_route_with_its_metric():
    r = RouteEntry("fd00:172:2:1::/64", "fd00:172:2:1::", True, 1024, 0, PROTO_VTEP,
                   SCOPE_UNIVERSE, RTN_UNICAST)
    data = nlmsg.encode(Op("route", "del", r.dst, r.gateway, route=r), 7, 53)
    assert data == message(RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK, 53,
                           rtm(AF_INET6, 64, RT_TABLE_MAIN, PROTO_VTEP, SCOPE_UNIVERSE,
                               RTN_UNICAST)
                           + nla(RTA_DST, ip6("fd00:172:2:1::"))
                           + nla(RTA_TABLE, u32(RT_TABLE_MAIN)) + nla(RTA_OIF, u32(7))
                           + nla(RTA_GATEWAY, ip6("fd00:172:2:1::"))
                           + nla(RTA_PRIORITY, u32(1024)))


def test_an_ipv6_route_as_the_kernel_dumps_it_decodes():
    """rt6_fill_node: RTA_TABLE, RTA_DST, RTA_PRIORITY, RTA_GATEWAY, RTA_OIF, then
    RTA_CACHEINFO and RTA_PREF (not compared); the onlink flag in rtm_flags."""
    msg = kernel_route(RTNH_F_ONLINK, nla(RTA_TABLE, u32(254)),
                       nla(RTA_DST, ip6("fd00:172:2:1::")), nla(RTA_PRIORITY, u32(1024)),
                       nla(RTA_GATEWAY, ip6("fd00:172:2:1::")), nla(RTA_OIF, u32(7)),
                       nla(12, bytes(32)), nla(20, b"\x00"), family=AF_INET6, dst_len=64)
    assert nlmsg.decode_route(*msg) == (7, 254, RouteEntry(
        "fd00:172:2:1::/64", "fd00:172:2:1::", True, 1024, 0, PROTO_VTEP, SCOPE_UNIVERSE,
        RTN_UNICAST))


def test_an_ipv6_dump_asks_for_af_inet6_and_keeps_only_that_family():
    """read() of a dual-stack device: one dump per family for neighbours and routes; an
    entry of the other family in an answer (a kernel that ignores the family) is not kept."""
    seen = []

    def answer(data):
        ((typ, _f, seq, body),) = split(data)
        seen.append((typ, body[0]))
        if typ == RTM_GETNEIGH and body[0] == AF_INET6:
            bodies = [ndm(AF_INET6, 7, NUD_PERMANENT) + nla(NDA_DST, ip6("fd00:172:2:1::"))
                      + nla(NDA_LLADDR, MAC_BYTES), neigh("10.244.9.9")]
            return [b"".join(message(RTM_NEWNEIGH, NLM_F_MULTI, seq, b) for b in bodies)
                    + done(seq)]
        return [done(seq)]
    got = rtnl_on(FakeKernel(answer)).read(7, (AF_INET, AF_INET6))
    assert got.neighbours == {"fd00:172:2:1::": NeighEntry("fd00:172:2:1::", MAC, NUD_PERMANENT)}
    assert seen == [(RTM_GETNEIGH, AF_INET), (RTM_GETNEIGH, AF_INET6), (RTM_GETNEIGH, AF_BRIDGE),
                    (RTM_GETROUTE, AF_INET), (RTM_GETROUTE, AF_INET6)]
    seen.clear()
    rtnl_on(FakeKernel(answer)).read(7)   # an IPv4-only plan: IPv6 is off on the device
    assert seen == [(RTM_GETNEIGH, AF_INET), (RTM_GETNEIGH, AF_BRIDGE), (RTM_GETROUTE, AF_INET)]
