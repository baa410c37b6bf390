"""`vxinspect -i IFACE`: capture with `tcpdump -w -` and read its pcap stream.

How data flows: `check_interface` refuses early, in one line, an interface that
does not exist or that we may not capture on. `Capture` starts tcpdump in its
own session with a kernel filter on the VXLAN ports (`bpf_filter`), packet-
buffered (-U) pcap on stdout; that pipe becomes a `stream.Source` and goes
through the same reader and decoder as a file (`run.inspect_source`). To end
the capture (--duration, SIGINT) tcpdump is sent SIGINT: it flushes what it
has, prints its counters on stderr and closes the pipe, so the report ends at
a record boundary and counts every packet tcpdump saw. --count is tcpdump's
own -c. The counters (received by the filter, dropped by the kernel) are read
from tcpdump's stderr into `stats`.

Why tcpdump and not an AF_PACKET socket of our own: libpcap reads a
TPACKET_V3 memory-mapped ring (-B sets its size), so the kernel queues bursts
without a system call per packet and Python's speed does not decide what is
lost; it compiles the filter for IPv4, IPv6 and VLAN-tagged frames; it counts
the kernel's drops, so a loss is reported, never silent; and the stream it
writes is the pcap that `vxinspect -` already reads, one code path for all
three inputs. bootstrap.sh installs it; when it is missing we say so in one
line (exit 2).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading

from .stream import Source

BUFFER_KIB = 16384  # tcpdump -B: the kernel ring, room for bursts while we decode


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when vxinspect dies, however it dies, so that
    no tcpdump outlives it (it is in its own session: no terminal signal reaches it)."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class LiveError(Exception):
    """The capture cannot start: one line for the user."""


def bpf_filter(ports) -> str:
    """UDP to a VXLAN port over IPv4 or IPv6, and outer fragments that carry no UDP
    header to match (IPv4 offset != 0; IPv6 with a Fragment header next), tagged or not."""
    plain = ("(udp and (" + " or ".join(f"dst port {p}" for p in sorted(ports)) + "))"
             " or (ip and ip[6:2] & 0x1fff != 0) or (ip6 and ip6[6] == 44)")
    return f"({plain}) or (vlan and ({plain}))"


def check_interface(iface: str) -> None:
    try:
        socket.if_nametoindex(iface)
    except OSError:
        raise LiveError(f"{iface}: no such interface") from None
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
    except PermissionError:
        raise LiveError(f"{iface}: capturing needs root or CAP_NET_RAW") from None
    except OSError as e:
        raise LiveError(f"{iface}: cannot capture: {e.strerror or e}") from None


class Capture:
    def __init__(self, iface: str, ports, count: int | None = None, on_listening=None):
        check_interface(iface)
        exe = shutil.which("tcpdump") or next(
            (p for p in ("/usr/bin/tcpdump", "/usr/sbin/tcpdump") if os.access(p, os.X_OK)), None)
        if exe is None:
            raise LiveError("tcpdump is not installed (bootstrap.sh installs it); "
                            "or pipe a capture in: vxinspect -")
        argv = [exe, "-i", iface, "-w", "-", "-U", "-n", "-B", str(BUFFER_KIB)]
        if count is not None:
            argv += ["-c", str(count)]
        argv.append(bpf_filter(ports))
        self.iface = iface
        self.errors: list[str] = []
        self.on_listening = on_listening
        try:
            # its own session: a terminal's ^C reaches us only, and we stop tcpdump
            # ourselves, after which it flushes and closes the pipe
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        except OSError as e:
            raise LiveError(f"cannot run tcpdump: {e.strerror or e}") from None
        self._err = threading.Thread(target=self._read_stderr, daemon=True)
        self._err.start()
        self.source = Source(self.proc.stdout.fileno(), iface)
        self._timer = None

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            text = line.decode(errors="replace").rstrip()
            self.errors.append(text)
            if "listening on" in text and self.on_listening is not None:
                self.on_listening()

    def stop_after(self, seconds: float) -> None:
        self._timer = threading.Timer(seconds, self.stop)
        self._timer.daemon = True
        self._timer.start()

    def stop(self) -> None:
        """Ask tcpdump to end (safe from a signal handler); if it does not within 2 s,
        the reader stops by itself."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGINT)
            except ProcessLookupError:
                pass
        t = threading.Timer(2.0, self.source.stop)
        t.daemon = True
        t.start()

    def finish(self) -> int:
        """End tcpdump (if it is still running), reap it; its exit status."""
        if self._timer is not None:
            self._timer.cancel()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.join(2)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode

    def stats(self) -> dict:
        """tcpdump's counters from its last words: received by filter, dropped by kernel."""
        out = {"tool": "tcpdump", "interface": self.iface}
        for line in self.errors:
            m = re.match(r"(\d+) packets? (received by filter|dropped by kernel|captured)", line)
            if m:
                out[m.group(2).replace(" ", "_")] = int(m.group(1))
        return out

    def failure(self) -> str | None:
        """tcpdump's own complaint when it ended in error (one line), else None."""
        if self.proc.returncode in (0, None, -signal.SIGINT):
            return None
        lines = [x.removeprefix("tcpdump: ") for x in self.errors
                 if x and not x.startswith(("listening on", "tcpdump: listening"))]
        return lines[0] if lines else f"tcpdump exited with status {self.proc.returncode}"
