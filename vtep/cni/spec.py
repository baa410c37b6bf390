"""The CNI protocol itself (specification 1.1.0, read back to 0.3.0): what a runtime
hands a plugin (CNI_* variables, a JSON config on stdin) and what the plugin answers
(a result, a version list or an error object), independent of what vtep does with it.

A request is checked here before anything is touched: the command, the variables the
command requires (spec section 2, "Parameters"), the config's JSON and its cniVersion.
Every refusal is a CniError carrying the spec's well-known code (section 5, "Error"),
so the entry point can print the error object and exit non-zero.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ..plan import ifname_problem

# What this plugin speaks. 0.1.0 and 0.2.0 results have another shape (ip4/ip6 keys)
# that no runtime of the last five years asks for; they are refused with code 1.
SUPPORTED = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED[-1]
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")

# Section 5's well-known error codes.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
BAD_ENVIRONMENT = 4
IO_FAILURE = 5
UNDECODABLE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
MESSAGES = {
    INCOMPATIBLE_VERSION: "Incompatible CNI version",
    UNSUPPORTED_FIELD: "Unsupported field in network configuration",
    UNKNOWN_CONTAINER: "Container unknown or does not exist",
    BAD_ENVIRONMENT: "Invalid necessary environment variables",
    IO_FAILURE: "I/O failure",
    UNDECODABLE: "Failed to decode content",
    INVALID_CONFIG: "Invalid network configuration",
    TRY_AGAIN_LATER: "Try again later",
    NOT_AVAILABLE: "The plugin is not available",
}
# Plugin-specific codes (100 and up are the plugin's own, section 5).
EXHAUSTED = 100      # no free address is left in the node's subnet
SETUP_FAILED = 101   # the kernel or iproute2 refused a step (the step is named)
CHECK_FAILED = 102   # CHECK found the attachment broken (what is named)
MESSAGES.update({EXHAUSTED: "Subnet exhausted", SETUP_FAILED: "Setting up the network failed",
                 CHECK_FAILED: "The container's network is not as added"})

# Variables each command needs (section 2); CNI_NETNS is optional for DEL.
REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "VERSION": (), "STATUS": (), "GC": (),
}
# Section 2: "alphanumeric, then alphanumerics, underscore, dot or hyphen".
# fullmatch, ASCII only: `$` would let a trailing newline through, `\d` any script's digits
CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", re.ASCII)
VERSION_RE = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+", re.ASCII)


class CniError(Exception):
    """A refusal the runtime reads as the spec's error object."""

    def __init__(self, code: int, details: str):
        super().__init__(details)
        self.code = code
        self.details = details

    def document(self, version: str) -> dict:
        return {"cniVersion": version, "code": self.code,
                "msg": MESSAGES.get(self.code, "Error"), "details": self.details}


@dataclass
class Request:
    command: str
    version: str
    config: dict
    container: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The attachment, (CNI_CONTAINERID, CNI_IFNAME) as section 3 names it."""
        return f"{self.container}/{self.ifname}"


def version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def parse_args(text: str) -> dict:
    """CNI_ARGS: "K=V;K2=V2"; a pair without '=' is refused (code 4)."""
    out = {}
    for pair in filter(None, text.split(";")):
        k, eq, v = pair.partition("=")
        if not eq or not k:
            raise CniError(BAD_ENVIRONMENT, f"CNI_ARGS: {pair!r} is not KEY=VALUE")
        out[k] = v
    return out


def read_request(env, stdin: bytes) -> Request:
    """The request, checked: command, variables, JSON, version. Never touches the host."""
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        shown = f"{command!r}" if command else "not set"
        raise CniError(BAD_ENVIRONMENT, f"CNI_COMMAND: {shown} (one of {', '.join(COMMANDS)})")
    missing = [v for v in REQUIRED[command] if not env.get(v)]
    if missing:
        raise CniError(BAD_ENVIRONMENT, f"{command} needs {', '.join(missing)}, which "
                                        f"{'is' if len(missing) == 1 else 'are'} not set")
    container = env.get("CNI_CONTAINERID", "")
    if container and not CONTAINER_ID.fullmatch(container):
        raise CniError(BAD_ENVIRONMENT, f"CNI_CONTAINERID {container[:80]!r}: letters, digits, "
                                        "'_', '.' and '-', starting with a letter or digit")
    ifname = env.get("CNI_IFNAME", "")
    why = ifname_problem(ifname) if ifname else None
    if why:
        raise CniError(BAD_ENVIRONMENT, f"CNI_IFNAME {ifname[:40]!r}: not a Linux interface "
                                        f"name ({why})")
    try:
        config = json.loads(stdin) if stdin.strip() else None
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CniError(UNDECODABLE, f"network config on stdin: not JSON ({e})")
    if config is None and command == "VERSION":
        config = {}  # VERSION may come with nothing on stdin: answer with the latest
    if not isinstance(config, dict):
        raise CniError(UNDECODABLE, "network config on stdin: "
                       + ("empty" if config is None else "not a JSON object"))
    version = config.get("cniVersion")
    if version is None:
        if command != "VERSION":
            raise CniError(INVALID_CONFIG, "network config: cniVersion is missing")
        version = LATEST
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
        raise CniError(UNDECODABLE, f"network config: cniVersion {version!r} is not a "
                                    "version (e.g. \"1.0.0\")")
    if version not in SUPPORTED and command != "VERSION":
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version} is not supported "
                       f"(supported: {', '.join(SUPPORTED)})")
    if command == "CHECK" and version_key(version) < (0, 4, 0):
        raise CniError(INCOMPATIBLE_VERSION, f"CHECK needs cniVersion 0.4.0 or later "
                                             f"(the config says {version})")
    if command in ("STATUS", "GC") and version_key(version) < (1, 1, 0):
        raise CniError(INCOMPATIBLE_VERSION, f"{command} needs cniVersion 1.1.0 or later "
                                             f"(the config says {version})")
    return Request(command, version, config, container, env.get("CNI_NETNS", ""), ifname,
                   parse_args(env.get("CNI_ARGS", "")))


def version_result(req_version: str) -> dict:
    return {"cniVersion": req_version, "supportedVersions": list(SUPPORTED)}


def render_result(version: str, interfaces: list[dict], ips: list[dict], routes: list[dict],
                  dns: dict | None) -> dict:
    """An ADD result in the shape `version` defines: 0.3.x and 0.4.0 tag each IP with
    "version": "4"; 1.0.0 dropped that tag; 1.1.0 added the interface's "mtu"."""
    old = version_key(version) < (1, 0, 0)
    with_mtu = version_key(version) >= (1, 1, 0)
    ifs = [{k: v for k, v in i.items() if k != "mtu" or with_mtu} for i in interfaces]
    out_ips = []
    for ip in ips:
        item = dict(ip)
        if old:   # "4" or "6", by the address (0.3.0's IPConfig.version)
            item = {"version": "6" if ":" in str(item.get("address")) else "4", **item}
        out_ips.append(item)
    result = {"cniVersion": version, "interfaces": ifs, "ips": out_ips, "routes": routes}
    if dns:
        result["dns"] = dns
    return result
