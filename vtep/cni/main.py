"""The `vtep-cni` binary: CNI_* variables and stdin in, one JSON document out.

Exit status: 0 on success (ADD and VERSION print their result; DEL, CHECK, STATUS and
GC print nothing), 1 on any error, which is printed on stdout as the spec's error
object (code, msg, details; libcni reads it there) and repeated as one line on stderr
for whoever runs the plugin by hand. A bug in the plugin is still an error object
(code 101, its type and message), never a traceback, unless VTEP_CNI_DEBUG is set.
"""
from __future__ import annotations

import json
import os
import sys

from .spec import LATEST, SETUP_FAILED, SUPPORTED, CniError, read_request

ABOUT = (f"vtep-cni: the CNI plugin of vtep (CNI spec {', '.join(SUPPORTED)}); container "
         "runtimes run it with CNI_COMMAND and a network config on stdin (README, "
         "\"vtep-cni\")")


def _version_of(stdin: bytes) -> str:
    """The cniVersion to answer an error in: the config's when it has a usable one."""
    try:
        v = json.loads(stdin).get("cniVersion")
    except (ValueError, AttributeError, UnicodeDecodeError, RecursionError):
        return LATEST
    return v if v in SUPPORTED else LATEST


# Where `ip` and `nsenter` live; a runtime's PATH may lack the sbin directories.
SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    have = os.environ.get("PATH", "").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join([d for d in have if d] +
                                         [d for d in SYSTEM_PATH if d not in have])
    if argv or (not os.environ.get("CNI_COMMAND") and sys.stdin.isatty()):
        print(ABOUT, file=sys.stderr)   # a human, not a runtime (the plugins' skel does so)
        return 0 if not argv or argv[0] in ("-h", "--help", "--version") else 2
    try:
        stdin = sys.stdin.buffer.read()
    except OSError as e:
        return _fail(CniError(5, f"reading the network config from stdin: {e.strerror}"),
                     LATEST)
    version = _version_of(stdin)
    try:
        from . import plugin   # after the cheap checks: VERSION needs none of vtep
        out = plugin.run(read_request(os.environ, stdin))
    except CniError as e:
        return _fail(e, version)
    except Exception as e:   # a bug: still the spec's error object, named
        if os.environ.get("VTEP_CNI_DEBUG"):
            raise
        return _fail(CniError(SETUP_FAILED, f"internal error: {type(e).__name__}: {e}"),
                     version)
    if out is not None:
        _write(json.dumps(out, indent=2))
    return 0


def _fail(e: CniError, version: str) -> int:
    _write(json.dumps(e.document(version), indent=2))
    try:
        print("vtep-cni: " + " ".join(e.details.split()), file=sys.stderr)   # one line
    except OSError:
        pass
    return 1


def _write(text: str) -> None:
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:   # the reader went away: nothing left to tell it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
