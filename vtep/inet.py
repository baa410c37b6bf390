"""Numbers of IP, ICMP and their socket options, written once for the whole tree.

Pure data, each number with the document it comes from. Who reads what:
the userspace data path (vtep.datapath: EtherTypes, protocols and fragment bits
of the flow hash), vxinspect's decoder (vxinspect.decode and its helpers: the
same, plus header lengths and IPv6 extension headers), the ICMP errors a
userspace VTEP sends (vtep.icmp), the path MTU prober (vtep.pmtu: ICMP types
and the PMTUDISC socket options), the userspace sockets (vtep.userspace: DF,
IP_MTU) and the MTU bounds of the plan (vtep.plan) and the CLI (vtep.cli).
The VXLAN header's own numbers are in vtep.wire.

Socket option values are Linux's (the only system vtep runs on); Python's
socket module does not define all of them, so they are written out here.
"""
from __future__ import annotations

# ---------------------------------------------------------------- EtherTypes
# IEEE 802 EtherType registry; Linux <linux/if_ether.h> ETH_P_IP, ETH_P_ARP, ETH_P_IPV6.
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD

# ---------------------------------------------------------------- IP protocol numbers
# IANA "Assigned Internet Protocol Numbers"; <netinet/in.h> IPPROTO_*. 0, 43, 44 and 60
# are IPv6 extension headers (RFC 8200 section 4) found in the Next Header chain.
IPPROTO_HOPOPTS = 0
IPPROTO_ICMP = 1
IPPROTO_IGMP = 2
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_ICMPV6 = 58
IPPROTO_DSTOPTS = 60
IPPROTO_SCTP = 132

# ---------------------------------------------------------------- header lengths
IPV4_HLEN = 20  # RFC 791 section 3.1: IHL 5, no options
IPV6_HLEN = 40  # RFC 8200 section 3
UDP_HLEN = 8    # RFC 768
TCP_HLEN = 20   # RFC 9293 section 3.1: data offset 5, no options
ICMP_HLEN = 8   # RFC 792 / RFC 4443 section 2.1: type, code, checksum and 4 more bytes
IPV6_EXT_UNIT = 8  # RFC 8200 section 4: extension header lengths count 8-octet units

# ---------------------------------------------------------------- IPv4 flags and offset
# The 16 bits after the identification (RFC 791 section 3.1); <netinet/ip.h> names.
IP_DF = 0x4000       # don't fragment
IP_MF = 0x2000       # more fragments
IP_OFFMASK = 0x1FFF  # fragment offset, in 8-octet units: non-zero in a later fragment
# IPv6 fragment header (RFC 8200 section 4.5): offset in the top 13 bits, M the lowest.
IP6F_OFF_MASK = 0xFFF8
IP6F_MORE_FRAG = 0x0001

# ---------------------------------------------------------------- ICMP and ICMPv6
ICMP_ECHOREPLY = 0      # RFC 792
ICMP_UNREACH = 3        # RFC 792: destination unreachable
ICMP_FRAG_NEEDED = 4    # RFC 792: its code "fragmentation needed and DF set"; RFC 1191 4
ICMP_ECHO = 8           # RFC 792
ICMP6_UNREACH = 1       # RFC 4443 section 3.1
ICMP6_TOO_BIG = 2       # RFC 4443 section 3.2
ICMP6_ECHO = 128        # RFC 4443 section 4.1
ICMP6_ECHOREPLY = 129   # RFC 4443 section 4.2

# ---------------------------------------------------------------- MTUs
MIN_MTU = 576
"""RFC 791 section 3.1 / RFC 1122 3.3.3: every IPv4 host accepts 576-byte datagrams."""
IPV6_MIN_MTU = 1280
"""RFC 8200 section 5: every IPv6 link carries 1280-byte packets."""
IP_MAXPACKET = 65535
"""The largest IPv4 total length (a 16-bit field, RFC 791); <netinet/ip.h> IP_MAXPACKET."""

# ---------------------------------------------------------------- socket options (Linux)
# <linux/in.h>: level IPPROTO_IP
IP_MTU_DISCOVER = 10
IP_MTU = 14             # getsockopt on a connected socket: the path MTU the kernel holds
IP_PMTUDISC_DO = 2      # always DF; the kernel's path MTU applies (EMSGSIZE above it)
IP_PMTUDISC_PROBE = 3   # DF, but ignore the cached path MTU: each packet probes the path
# <linux/in6.h>: level IPPROTO_IPV6
IPV6_CHECKSUM = 7       # RFC 3542 section 3.1: offset of the checksum the kernel fills in
IPV6_MTU_DISCOVER = 23
IPV6_MTU = 24
IPV6_PMTUDISC_DO = 2
IPV6_PMTUDISC_PROBE = 3
