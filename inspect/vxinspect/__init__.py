"""vxinspect: a fast, strict inspector for VXLAN captures.

How data flows: `capture` streams pcap/pcapng records in batches (format by
magic number, never by name); `decode` walks each frame from the link layer
through the outer IP/UDP headers, the VXLAN header (`vtep.wire`) and the inner
frame, and fires the checks of `checks` into a `report.Tally`;
`batchsum` sums the checksums of each slice of a batch at once with numpy
(for a large file, in a worker process on the other core);
`analyze.inspect_file` drives that loop and turns the tally into a
`report.Report` (text or JSON); `show` dissects one packet with scapy; `plot`
draws --plot's picture from counters the loop fills only when asked; `cli`
maps it all to exit codes.

Start reading at `decode.make_decoder`: its loop checks the common packet
(Ethernet/IPv4/UDP/VXLAN/Ethernet/IPv4) inline, and hands every other one to
the slow paths, each named for what it holds: `outer` (outer headers of any
other shape, using `linktypes` for the link layer, `ipv6ext` for IPv6
extension headers and `fragments` for outer fragments), `inner` (any other
VXLAN layer and inner frame, nested VXLAN included) and `plancheck` (--plan).
IP numbers come from `vtep.inet`.
"""
from .analyze import Options, inspect_file
from .checks import CHECKS
from .report import Report

__all__ = ["CHECKS", "Options", "Report", "inspect_file"]
