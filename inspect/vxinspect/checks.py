"""The checks vxinspect runs: stable ids, severities and meanings.

The ids are part of the interface (JSON output, docs, tests): never rename one.
"""
from __future__ import annotations

from typing import NamedTuple

ERROR, WARNING, INFO = "error", "warning", "info"


class Check(NamedTuple):
    id: str
    severity: str
    meaning: str


CHECKS: dict[str, Check] = {c.id: c for c in (
    Check("vni-mismatch", ERROR, "VNI not in the expected set (--vni)"),
    Check("vxlan-flags", ERROR, "I flag (0x08) clear (RFC 7348 section 5)"),
    Check("vxlan-reserved", ERROR, "a reserved bit or byte of the VXLAN header is non-zero"),
    Check("outer-fragment", ERROR, "outer IP packet is a fragment (RFC 7348 section 4.3)"),
    Check("outer-too-big", ERROR, "outer IP packet longer than the underlay MTU"),
    Check("inner-too-big", ERROR, "inner L3 packet longer than the overlay MTU"),
    Check("ip-checksum", ERROR, "outer IPv4 header checksum wrong"),
    Check("udp-checksum", ERROR, "outer UDP checksum non-zero and wrong"),
    Check("udp-zero-checksum-ipv6", WARNING, "outer UDP checksum zero over IPv6"),
    Check("inner-ip-checksum", ERROR, "inner IPv4 header checksum wrong"),
    Check("inner-l4-checksum", WARNING,
          "inner TCP/UDP/ICMP checksum wrong (often a checksum-offload artefact)"),
    Check("truncated", ERROR,
          "a header runs past the captured bytes, or a length field disagrees with them"),
    Check("inner-vlan", WARNING, "inner frame carries a VLAN tag (RFC 7348 section 6.1)"),
    Check("unknown-inner-type", WARNING, "inner EtherType is not IPv4, IPv6, ARP or VLAN"),
    Check("legacy-port", INFO, "destination port 8472 (Linux legacy) rather than 4789"),
    Check("df-clear", INFO, "outer IPv4 DF bit clear"),
    Check("nesting-too-deep", ERROR, "VXLAN nested more than 4 deep"),
    Check("mac-move", WARNING, "one inner source MAC seen behind two different outer source IPs"),
    Check("plan-mismatch", ERROR,
          "outer source not a node of the plan, outer destination not the node the plan's fdb "
          "names for the inner destination MAC, VNI or port not the plan's, or an inner overlay "
          "address not in the subnet of the node that sent (source) or receives (destination) "
          "it (--plan)"),
)}

MAX_NESTING = 4
FIRST_PACKETS = 10  # packet numbers kept per check (the JSON "packets" list)
