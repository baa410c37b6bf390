"""vxinspect's command line: the one place that maps outcomes to exit codes.

Exit status: 0 every capture ok; 1 an error-severity check fired; 2 a capture
could not be read, the --plan file is invalid, or bad usage. With several
files the worst status wins. A reader that leaves early (`vxinspect F | head -1`)
changes nothing but the output: the inspection finishes with the rest of the
output discarded, nothing goes to stderr, and the status is the verdict, as
with > /dev/null.
"""
from __future__ import annotations

import argparse
import json
import sys

from vtep import wire
from vtep.cli import output_until_reader_leaves
from vtep.errors import PlanError

from .analyze import Options, inspect_file
from .capture import CaptureError
from .checks import CHECKS

EXIT_OK, EXIT_CHECKS, EXIT_UNREADABLE = 0, 1, 2


class UsageError(Exception):
    pass


def _int_in(name: str, lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            v = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, not {text!r}")
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{name} {v} is outside {lo}..{hi}")
        return v
    return parse


class _Once(argparse.Action):
    """An option that may be given once (one capture is held against one plan)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest) is not None:
            raise argparse.ArgumentError(self, "may be given only once")
        setattr(namespace, self.dest, values)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    checks = "\n".join(f"  {c.id:<24}{c.severity:<8} {c.meaning}" for c in CHECKS.values())
    p = _Parser(
        prog="vxinspect",
        description="Decode VXLAN captures (pcap/pcapng) and check outer headers, the VXLAN "
                    "header, the VNI, inner headers and the MTU.",
        epilog=f"checks:\n{checks}\n\nexit status: 0 ok, 1 an error check fired, "
               "2 a capture could not be read, a bad --plan or bad usage",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="FILE", help="pcap or pcapng capture")
    p.add_argument("--json", action="store_true", help="print one JSON document (an array for several files)")
    p.add_argument("--vni", action="append", type=_int_in("--vni", 0, wire.VNI_MAX),
                   help=f"expected VNI, repeatable (default: the plan's VNI, else "
                        f"{wire.DEFAULT_VNI})")
    p.add_argument("--port", action="append", type=_int_in("--port", 1, 65535), default=[],
                   help="another UDP destination port that carries VXLAN (4789, 8472 and the "
                        "plan's port always do)")
    p.add_argument("--plan", action=_Once, metavar="F",
                   help="cluster plan (vtep TOML): check outer addresses, the fdb, the VNI and "
                        "the port against it (plan-mismatch); its VNI becomes the expected set "
                        "unless --vni is given")
    p.add_argument("--underlay-mtu", type=_int_in("--underlay-mtu", 68, 1 << 20), default=1500,
                   help="underlay MTU (default 1500)")
    p.add_argument("--mtu", type=_int_in("--mtu", 0, 1 << 20),
                   help="overlay MTU (default: underlay MTU - 50 over IPv4, - 70 over IPv6)")
    p.add_argument("--no-checksums", action="store_true", help="skip checksum verification (faster)")
    p.add_argument("--show", type=_int_in("--show", 1, 1 << 62), metavar="N",
                   help="print the full scapy dissection of packet N (1-based) and exit")
    return p


def _options(a, plan=None) -> Options:
    # --vni replaces the expected set; without it the plan's VNI is expected. The
    # plan's port is added to the VXLAN ports (Options does that) whatever --port says.
    default_vni = plan.vni if plan is not None else wire.DEFAULT_VNI
    return Options(vnis=frozenset(a.vni or [default_vni]),
                   ports=frozenset(wire.VXLAN_PORTS | set(a.port)),
                   underlay_mtu=a.underlay_mtu, mtu=a.mtu, checksums=not a.no_checksums,
                   plan=plan)


def _fail(msg: str) -> None:
    print(f"vxinspect: {msg}", file=sys.stderr)


def main(argv=None) -> int:
    with output_until_reader_leaves():
        return _main(argv)


def _main(argv) -> int:
    try:
        a = build_parser().parse_args(argv)
    except UsageError as e:
        _fail(f"{e} (see vxinspect --help)")
        return EXIT_UNREADABLE
    plan = None
    if a.plan is not None:
        from vtep.plan import load
        try:
            plan = load(a.plan)
        except PlanError as e:
            for line in e.problems:
                _fail(line)
            return EXIT_UNREADABLE
    opts = _options(a, plan)
    if a.show is not None:
        return _show(a, opts)
    status = EXIT_OK
    docs = []
    for path in a.files:
        report = inspect_file(path, opts)
        if a.json:
            docs.append(report.to_dict())
        else:
            if len(a.files) > 1 and path != a.files[0]:
                print()
            print(report.to_text())
        if report.error:
            _fail(f"{path}: {report.error['message']} at byte offset {report.error['offset']}")
            status = EXIT_UNREADABLE
        elif not report.ok:
            status = max(status, EXIT_CHECKS)
    if a.json:
        json.dump(docs[0] if len(docs) == 1 else docs, sys.stdout, indent=2)
        print()
    return status


def _show(a, opts: Options) -> int:
    from .show import NoSuchPacket, dissect
    status = EXIT_OK
    for path in a.files:
        try:
            print(dissect(path, a.show, opts))
        except NoSuchPacket as e:
            _fail(f"{path}: {e}")
            status = EXIT_UNREADABLE
        except CaptureError as e:
            _fail(f"{path}: {e.message} at byte offset {e.offset}")
            status = EXIT_UNREADABLE
        except OSError as e:
            _fail(f"{path}: cannot read: {e.strerror or e} at byte offset 0")
            status = EXIT_UNREADABLE
    return status


if __name__ == "__main__":
    sys.exit(main())
