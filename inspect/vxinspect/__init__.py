"""vxinspect: a fast, strict inspector for VXLAN captures.

How data flows: `capture` streams pcap/pcapng records in batches (format by
magic number, never by name); `decode` walks each frame from the link layer
through the outer IP/UDP headers, the VXLAN header (`vtep.wire`) and the inner
frame, recursing into nested VXLAN, and fires the checks of `checks` into a
`report.Tally`; `analyze.inspect_file` drives that loop and turns the tally into
a `report.Report` (text or JSON); `plancheck` holds packets against a cluster
plan (--plan); `show` dissects one packet with scapy; `cli` maps it all to exit
codes.
"""
from .analyze import Options, inspect_file
from .checks import CHECKS
from .report import Report

__all__ = ["CHECKS", "Options", "Report", "inspect_file"]
