"""vxinspect's command line: the one place that maps outcomes to exit codes.

Exit status: 0 every capture ok; 1 an error-severity check fired; 2 a capture
could not be read, the --plan file is invalid, or bad usage. With several
files the worst status wins. A reader that leaves early (`vxinspect F | head -1`)
changes nothing but the output: the inspection finishes with the rest of the
output discarded, nothing goes to stderr, and the status is the verdict, as
with > /dev/null.

Inputs: FILE, `-` (a pcap/pcapng stream on stdin, read as it comes) or
`-i IFACE` (live, through `live.Capture`); all three go through
`run.inspect_source` (with --interval, a live capture reports on wall-clock
ticks, the others in capture time). On a terminal's stderr each shows a
progress line (a file: of its size; stdin and -i: packets and packets/s).
SIGINT ends any of them cleanly: the report of what was read so far is printed and the status is what it would be had the input ended
there (1 if an error check fired, else 0; 2 only for a read fault before it);
files after the one interrupted are not read (a SIGINT before reading starts
is `vxinspect: interrupted`, 130). A capture that tcpdump could not
start, or an interface that is missing or not ours to capture on, is one line
and exit 2.

--plot FILE.png (one capture) records per-packet columns during the decode
(plot.Recorder) and draws them when the input ends, also after SIGINT; its
path is vetted before anything is read (a bad one is one line, exit 2).
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import sys

from vtep import wire
from vtep.cli import output_until_reader_leaves
from vtep.errors import PlanError

from .analyze import Options
from .capture import CaptureError
from .checks import CHECKS
from .progress import for_stderr
from .run import inspect_source
from .stream import Source

EXIT_OK, EXIT_CHECKS, EXIT_UNREADABLE = 0, 1, 2


class UsageError(Exception):
    pass


def _seconds(name: str):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number of seconds, not {text!r}")
        if not (v > 0 and math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"{name} must be more than 0 seconds, not {text}")
        return v
    return parse


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
    p.add_argument("files", nargs="*", metavar="FILE",
                   help="pcap or pcapng capture; - reads a stream from stdin "
                        "(tcpdump -U -w - | vxinspect -)")
    p.add_argument("-i", "--interface", metavar="IFACE",
                   help="capture live on IFACE (with tcpdump -w - underneath, filtered in the "
                        "kernel to the VXLAN ports and outer fragments); until --count, "
                        "--duration or SIGINT")
    p.add_argument("--count", type=_int_in("--count", 1, 1 << 62), metavar="N",
                   help="with -i: stop after N captured packets")
    p.add_argument("--duration", type=_seconds("--duration"), metavar="S",
                   help="with -i: stop after S seconds")
    p.add_argument("--interval", type=_seconds("--interval"), metavar="S",
                   help="also report every S seconds of capture time (the capture so far, "
                        "and that interval's packets), then the whole report at the end")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document (an array for several files); with "
                        "--interval, one document per line")
    p.add_argument("--vni", action="append", type=_int_in("--vni", 0, wire.VNI_MAX),
                   help=f"expected VNI, repeatable (default: the plan's VNI, else "
                        f"{wire.DEFAULT_VNI})")
    p.add_argument("--port", action="append", type=_int_in("--port", 1, 65535), default=[],
                   help="another UDP destination port that carries VXLAN (4789, 8472 and the "
                        "plan's port always do)")
    p.add_argument("--plan", action=_Once, metavar="F",
                   help="cluster plan (vtep TOML): check outer addresses, the fdb, the VNI, "
                        "the port and inner overlay addresses (IPv4 and IPv6) against the "
                        "nodes' subnets (plan-mismatch); its VNI becomes the expected set "
                        "unless --vni is given")
    p.add_argument("--underlay-mtu", type=_int_in("--underlay-mtu", 68, 1 << 20), default=1500,
                   help="underlay MTU (default 1500)")
    p.add_argument("--mtu", type=_int_in("--mtu", 0, 1 << 20),
                   help="overlay MTU (default: underlay MTU - 50 over IPv4, - 70 over IPv6)")
    p.add_argument("--no-checksums", action="store_true", help="skip checksum verification (faster)")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also draw one PNG (1600x1200 px) of the capture: outer and inner "
                        "packet sizes against the MTUs, packets/s per VNI, and when each "
                        "check fired (one FILE, -, or -i)")
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
        try:
            return _main(argv)
        except KeyboardInterrupt:
            # only before reading starts or after it ended (while reading, SIGINT
            # ends the input instead): nothing to report
            _fail("interrupted")
            return 130


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
    problem = _usage_problem(a)
    if problem:
        _fail(f"{problem} (see vxinspect --help)")
        return EXIT_UNREADABLE
    opts = _options(a, plan)
    if a.plot is not None:
        from .plot import PlotError, check_target
        try:
            check_target(a.plot)
        except PlotError as e:
            _fail(str(e))
            return EXIT_UNREADABLE
    if a.show is not None:
        return _show(a, opts)
    if a.interface is not None:
        return _live(a, opts)
    status = EXIT_OK
    docs = []
    for k, path in enumerate(a.files):
        if path == "-":
            src = Source(sys.stdin.fileno(), "-")
        else:
            try:
                src = Source.open(path)
            except OSError as e:
                src = None
                report, interrupted = _unopenable(path, e, opts), False
        recorder = _recorder(a, opts)
        if src is not None:
            try:
                # stdin: no total is known, the line shows packets and packets/s
                report, interrupted = _inspect(a, src, opts, src.stop,
                                               for_stderr(path, src.total), recorder)
            finally:
                if path != "-":
                    src.close()
        status = max(status, _emit(a, report, docs, k, interrupted))
        if src is not None:  # a capture that could not be opened has no picture
            status = max(status, _draw(recorder, a.plot, report))
        if interrupted:
            break
    if a.json and a.interval is None:
        json.dump(docs[0] if len(docs) == 1 else docs, sys.stdout, indent=2)
        print()
    return status


def _usage_problem(a) -> str | None:
    if a.interface is not None:
        if a.files:
            return "-i captures live: give no FILE with it"
        if a.show is not None:
            return "--show reads a file, not a live capture"
    else:
        if not a.files:
            return "give a FILE, - for stdin, or -i IFACE"
        for opt in ("count", "duration"):
            if getattr(a, opt) is not None:
                return f"--{opt} goes with -i IFACE"
        if a.files.count("-") > 1:
            return "stdin (-) can be read only once"
    if a.show is not None and "-" in a.files:
        return "--show needs a file, not stdin"
    if a.plot is not None:
        if a.show is not None:
            return "--plot and --show do not go together"
        if len(a.files) > 1:
            return "--plot draws one capture: give one FILE"
    return None


def _unopenable(path, e: OSError, opts: Options):
    from .report import Report, Tally
    return Report.from_tally(str(path), 0, 0, Tally(),
                             {"message": f"cannot read: {e.strerror or e}", "offset": 0}, opts.plan)


def _recorder(a, opts: Options):
    """A plot.Recorder when --plot was given, else None (and nothing is recorded)."""
    if a.plot is None:
        return None
    from .plot import Recorder
    mtu4 = opts.mtu if opts.mtu is not None else wire.overlay_mtu(opts.underlay_mtu, ipv6=False)
    mtu6 = opts.mtu if opts.mtu is not None else wire.overlay_mtu(opts.underlay_mtu, ipv6=True)
    return Recorder(opts.underlay_mtu, mtu4, mtu6)


def _draw(recorder, path, report) -> int:
    """Write --plot's picture once the input has ended; 2 if that fails."""
    if recorder is None:
        return EXIT_OK
    from .plot import PlotError, draw
    try:
        draw(recorder, path, report.file, report.packets)
    except PlotError as e:
        _fail(str(e))
        return EXIT_UNREADABLE
    return EXIT_OK


def _inspect(a, src: Source, opts: Options, on_sigint, progress, recorder=None, live=False):
    """inspect_source with SIGINT turned into on_sigint() and --interval reports printed
    (live: on wall-clock ticks)."""
    def on_interval(report, iv):
        if progress is not None:
            progress.done()  # off the terminal before the report; redrawn after
        if a.json:
            d = report.to_dict()
            d["interval"] = iv.to_dict()
            print(json.dumps(d))
        else:
            print(f"--- interval {iv.index}: {iv.start:g}-{iv.end:g} s of "
                  f"{'wall-clock' if live else 'capture'} time: "
                  f"{iv.packets} packets, {iv.vxlan_packets} VXLAN ---")
            print(report.to_text())
            print()
        sys.stdout.flush()  # a live reader sees each interval as it ends

    def handler(signum, frame):
        on_sigint()
    old = signal.signal(signal.SIGINT, handler)
    try:
        return inspect_source(src, opts, a.interval, on_interval, progress, recorder,
                              wall_clock=live)
    finally:
        signal.signal(signal.SIGINT, old)


def _emit(a, report, docs: list, k: int, interrupted: bool, capture: dict | None = None) -> int:
    """Print (or keep, for one JSON document) a finished report; its exit status."""
    if a.json:
        d = report.to_dict()
        if interrupted:
            d["interrupted"] = True
        if capture is not None:
            d["capture"] = capture
        if a.interval is not None:
            print(json.dumps(d))
        else:
            docs.append(d)
    else:
        if k:
            print()
        print(report.to_text())
        if capture is not None:
            print(f"capture: tcpdump on {capture['interface']}: "
                  f"{capture.get('received_by_filter', '?')} received by filter, "
                  f"{capture.get('dropped_by_kernel', '?')} dropped by kernel")
        if interrupted:
            print(f"interrupted: the report covers the {report.packets} packets read before SIGINT")
    if report.error:
        _fail(f"{report.file}: {report.error['message']} at byte offset {report.error['offset']}")
        return EXIT_UNREADABLE
    return EXIT_OK if report.ok else EXIT_CHECKS


def _live(a, opts: Options) -> int:
    from .live import Capture, LiveError
    try:
        # once tcpdump's socket is open, say so (as tcpdump does): from then on no
        # packet is missed, which is what a caller starting traffic waits for
        cap = Capture(a.interface, opts.ports, a.count,
                      on_listening=lambda: _fail(f"listening on {a.interface} (tcpdump)"))
    except LiveError as e:
        _fail(str(e))
        return EXIT_UNREADABLE
    recorder = _recorder(a, opts)
    try:
        if a.duration is not None:
            cap.stop_after(a.duration)
        report, interrupted = _inspect(a, cap.source, opts, cap.stop,
                                       for_stderr(a.interface, None), recorder, live=True)
    finally:
        cap.finish()
    failure = cap.failure()
    if failure is not None and report.packets == 0:
        _fail(f"{a.interface}: {failure}")
        return EXIT_UNREADABLE
    stats = cap.stats()
    if stats.get("dropped_by_kernel"):
        _fail(f"{a.interface}: the kernel dropped {stats['dropped_by_kernel']} packets "
              f"(the counts are short by that many)")
    docs: list = []
    # a stop we asked for (--duration, SIGINT to us) ends tcpdump, and so the stream,
    # normally: the report is whole up to that point
    status = _emit(a, report, docs, 0, interrupted, stats)
    if docs:
        json.dump(docs[0], sys.stdout, indent=2)
        print()
    return max(status, _draw(recorder, a.plot, report))


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
