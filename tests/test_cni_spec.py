"""vtep-cni's protocol layer against the CNI specification (1.1.0, read back to 0.3.0).

How data flows through these tests: each one hands vtep.cni what a runtime would (CNI_*
variables as a dict, the network config as bytes, a status file written in tmp_path, or
the whole binary run as a subprocess with env and stdin) and compares what comes back
(a Request, a result document, a CniError's code and details, an exit status with
stdout and stderr) with values written here by hand from the specification: the error
codes of section 5's table, the variables section 2 requires per command, the result
shapes of sections 5 (1.1.0) and the 0.4.0/1.0.0 texts (an IP's "version" is "4" or
"6" before 1.0.0; 1.0.0 has no interface "mtu", 1.1.0 has). Nothing is derived from
the code under test: where a constant of vtep.cni is used, it is only as input.

Unit tests: no root, no namespaces, no network. A test that fails here names a bug in
vtep/cni; it is left failing (not marked), so the bug stays visible.
"""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vtep import owner
from vtep.cni import netconf, plugin, spec
from vtep.cni.spec import CniError
from vtep.status import netns_inode

ROOT = Path(__file__).resolve().parents[1]

# The versions the plugin announces (its docstring and README: "spec 0.3.0-1.1.0").
ANNOUNCED = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]

# Section 2: the variables each command requires (CNI_PATH aside: vtep delegates to no
# plugin, so it never searches CNI_PATH).
REQUIRED = {
    "ADD": ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
    "DEL": ["CNI_CONTAINERID", "CNI_IFNAME"],
    "CHECK": ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
}
FULL_ENV = {"CNI_CONTAINERID": "c0ffee-1.a_b", "CNI_NETNS": "/run/netns/cni-1234",
            "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}


def env_for(command: str, **extra) -> dict:
    env = {"CNI_COMMAND": command, **FULL_ENV}
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def conf_bytes(version: str | None = "1.0.0", **keys) -> bytes:
    doc = {} if version is None else {"cniVersion": version}
    doc.update({"name": "podnet", "type": "vtep"}, **keys)
    return json.dumps(doc).encode()


def refused(env: dict, stdin: bytes, code: int) -> str:
    """read_request's refusal: the code asked for, and its details (checked non-empty)."""
    with pytest.raises(CniError) as info:
        spec.read_request(env, stdin)
    e = info.value
    assert e.code == code, (e.code, e.details)
    assert isinstance(e.details, str) and e.details.strip(), e.details
    return e.details


# --- spec.read_request: the command and the variables ----------------------------------------

@pytest.mark.parametrize("command", [None, "", "add", "Add", "FOO", "ADD ", "DELETE"])
def test_cni_command_unset_or_unknown_is_code_4_naming_it(command):
    # would catch: a missing/lowercase/unknown command taken as ADD, or refused with
    # another code, or refused without naming the variable (section 5, code 4)
    env = dict(FULL_ENV)
    if command is not None:
        env["CNI_COMMAND"] = command
    details = refused(env, conf_bytes(), 4)
    assert "CNI_COMMAND" in details


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_all_required_variables_missing_are_all_named(command):
    # would catch: stopping at the first missing variable, or DEL asking for CNI_NETNS
    env = {"CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin"}
    details = refused(env, conf_bytes("1.1.0"), 4)
    for var in REQUIRED[command]:
        assert var in details, (var, details)
    if command == "DEL":
        assert "CNI_NETNS" not in details


@pytest.mark.parametrize("command,var", [(c, v) for c, vs in REQUIRED.items() for v in vs])
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_each_required_variable_missing_is_code_4_naming_only_it(command, var, how):
    # would catch: a variable the command needs not being checked at all (so ADD would go
    # on with CNI_NETNS=""), or an empty value counted as given (the spec: "must not be empty")
    env = env_for(command, **{var: None if how == "unset" else ""})
    details = refused(env, conf_bytes("1.1.0"), 4)
    assert var in details
    for other in set(REQUIRED[command]) - {var}:
        assert other not in details, (other, details)


def test_del_without_cni_netns_is_accepted():
    # Section 2, DEL: CNI_NETNS is optional (the namespace may be gone already)
    req = spec.read_request(env_for("DEL", CNI_NETNS=None), conf_bytes("1.0.0"))
    assert (req.command, req.container, req.ifname, req.netns) == \
        ("DEL", "c0ffee-1.a_b", "eth0", "")


@pytest.mark.parametrize("command", ["VERSION", "STATUS", "GC"])
def test_commands_needing_no_container_variables_accept_none(command):
    # VERSION, STATUS and GC name no container: requiring CNI_CONTAINERID would refuse them
    env = {"CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin"}
    req = spec.read_request(env, conf_bytes("1.1.0"))
    assert req.command == command


def test_a_full_add_request_is_read_back():
    env = env_for("ADD", CNI_ARGS="IgnoreUnknown=1")
    req = spec.read_request(env, conf_bytes("0.4.0", bridge="br7"))
    assert (req.command, req.version, req.container, req.netns, req.ifname) == \
        ("ADD", "0.4.0", "c0ffee-1.a_b", "/run/netns/cni-1234", "eth0")
    assert req.config == {"cniVersion": "0.4.0", "name": "podnet", "type": "vtep",
                          "bridge": "br7"}
    assert req.args == {"IgnoreUnknown": "1"}


# Section 2: "Must start with an alphanumeric character, optionally followed by any
# combination of one or more alphanumeric characters, underscore, dot (.) or hyphen (-)."
@pytest.mark.parametrize("container", [
    "-abc", ".abc", "_abc", "a b", "a/b", "a:b", "a;b", "abc\n", "\nabc", "a\tb", "abc$",
])
@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_bad_container_id_is_code_4_naming_it(command, container):
    # would catch: a pattern that is not anchored at both ends (Python's "$" also
    # matches before a final newline: "abc\n" would become the key "abc\n/eth0")
    details = refused(env_for(command, CNI_CONTAINERID=container), conf_bytes("1.1.0"), 4)
    assert "CNI_CONTAINERID" in details


@pytest.mark.parametrize("container", ["a", "0", "A-1_b.c", "f" * 64, "1.2-3_4"])
def test_good_container_ids_are_accepted(container):
    req = spec.read_request(env_for("ADD", CNI_CONTAINERID=container), conf_bytes())
    assert req.container == container and req.key == f"{container}/eth0"


# Section 2, ADD: "if the plugin is unable to use this interface name it must return an
# error"; the kernel's dev_valid_name() refuses more than 15 bytes, ".", "..", '/', ':'
# and every isspace() character (' ', \t, \n, \v, \f, \r); a '%' is taken by the kernel
# as a pattern to number (eth%d becomes eth0), so the container would not get that name.
@pytest.mark.parametrize("ifname", [
    "a" * 16, "\u00e9" * 8, ".", "..", "eth/0", "eth:0", "eth 0", "eth\t0", "eth0\n",
    "eth\r0", "eth\x0b0", "eth\x0c0", "eth%d",
])
@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_bad_ifname_is_code_4_naming_it(command, ifname):
    # would catch: a length counted in characters instead of bytes, a whitespace set
    # smaller than the kernel's (\r, \v, \f), a '%' the kernel would expand
    details = refused(env_for(command, CNI_IFNAME=ifname), conf_bytes("1.1.0"), 4)
    assert "CNI_IFNAME" in details


@pytest.mark.parametrize("ifname", ["eth0", "a", "a" * 15, "net1.100", "veth-x_y"])
def test_good_ifnames_are_accepted(ifname):
    assert spec.read_request(env_for("ADD", CNI_IFNAME=ifname), conf_bytes()).ifname == ifname


# --- spec.read_request: the config on stdin --------------------------------------------------

@pytest.mark.parametrize("stdin", [
    b"{", b"{'cniVersion': '1.0.0'}", b"cniVersion=1.0.0", b'{"cniVersion": "1.0.0",}',
    b"\xff\xfe\x00garbage", b'{"cniVersion": "1.0.0"} {}',
])
@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "STATUS", "GC"])
def test_stdin_not_json_is_code_6(command, stdin):
    refused(env_for(command), stdin, 6)


@pytest.mark.parametrize("command", ["ADD", "DEL"])
def test_stdin_nested_beyond_the_parsers_depth_is_code_6(command):
    # would catch: the decoder's RecursionError escaping as a non-CniError (the entry
    # point then answers "internal error", code 101, or worse, see the main() tests)
    refused(env_for(command), b"[" * 100_000, 6)


@pytest.mark.parametrize("stdin", [b"[]", b'"ADD"', b"5", b"true", b'["cniVersion", "1.0.0"]'])
@pytest.mark.parametrize("command", ["ADD", "DEL", "VERSION"])
def test_stdin_not_an_object_is_code_6(command, stdin):
    details = refused(env_for(command), stdin, 6)
    assert "object" in details


@pytest.mark.parametrize("stdin", [b"", b"   \n", b"null"])
@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "STATUS", "GC"])
def test_stdin_empty_is_code_6(command, stdin):
    refused(env_for(command), stdin, 6)


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "STATUS", "GC"])
def test_cni_version_missing_is_code_7(command):
    details = refused(env_for(command), conf_bytes(None), 7)
    assert "cniVersion" in details


@pytest.mark.parametrize("stdin", [b"", b"{}", b'{"name": "podnet"}'])
def test_version_answers_without_a_cni_version(stdin):
    # VERSION is how a runtime learns what to send: it may come with nothing
    req = spec.read_request({"CNI_COMMAND": "VERSION"}, stdin)
    answer = spec.version_result(req.version)
    assert answer["supportedVersions"] == ANNOUNCED
    assert answer["cniVersion"] in ANNOUNCED


@pytest.mark.parametrize("version", [
    1, 1.0, True, ["1.0.0"], {"v": "1.0.0"}, "", "1", "1.0", "v1.0.0", "1.0.0.0", "one",
    "1.0.x", " 1.0.0", "1.0.0 ", "1.1.0\n", "\u0661.\u0661.\u0660",
])
@pytest.mark.parametrize("command", ["ADD", "DEL", "VERSION"])
def test_cni_version_not_a_version_string_is_code_6(command, version):
    # Section 1: cniVersion is a Semantic Version 2.0 string (ASCII digits, nothing around
    # them). Would catch: a number or list accepted, a "$" that lets a final newline
    # through, "\d" taking Arabic-Indic digits for a version
    details = refused(env_for(command), json.dumps({"cniVersion": version}).encode(), 6)
    assert "cniVersion" in details


@pytest.mark.parametrize("version", ["9.9.9", "0.1.0", "0.2.0", "2.0.0", "1.2.0"])
@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_unknown_version_is_code_1(command, version):
    details = refused(env_for(command), conf_bytes(version), 1)
    assert version in details


@pytest.mark.parametrize("version", ["9.9.9", "0.1.0", "1.0.0", "0.3.1"])
def test_version_still_answers_an_unknown_version_echoing_it(version):
    # Section 5, VERSION success: "cniVersion: The value of cniVersion specified on input"
    req = spec.read_request({"CNI_COMMAND": "VERSION"},
                            json.dumps({"cniVersion": version}).encode())
    assert spec.version_result(req.version) == {
        "cniVersion": version,
        "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


@pytest.mark.parametrize("version", ANNOUNCED)
@pytest.mark.parametrize("command", ["ADD", "DEL"])
def test_every_announced_version_is_accepted(command, version):
    # would catch: VERSION announcing a version the other commands then refuse
    assert spec.read_request(env_for(command), conf_bytes(version)).version == version


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1"])
def test_check_before_0_4_0_is_code_1(version):
    # CHECK came with spec 0.4.0
    details = refused(env_for("CHECK"), conf_bytes(version), 1)
    assert "CHECK" in details and version in details


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_check_from_0_4_0_is_accepted(version):
    assert spec.read_request(env_for("CHECK"), conf_bytes(version)).command == "CHECK"


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0"])
@pytest.mark.parametrize("command", ["STATUS", "GC"])
def test_status_and_gc_before_1_1_0_are_code_1(command, version):
    # STATUS and GC came with spec 1.1.0
    details = refused({"CNI_COMMAND": command}, conf_bytes(version), 1)
    assert command in details and version in details


@pytest.mark.parametrize("command", ["STATUS", "GC"])
def test_status_and_gc_at_1_1_0_are_accepted(command):
    assert spec.read_request({"CNI_COMMAND": command}, conf_bytes("1.1.0")).version == "1.1.0"


# --- spec.read_request: CNI_ARGS -------------------------------------------------------------

@pytest.mark.parametrize("text,want", [
    ("IgnoreUnknown=1;IP=10.0.0.5", {"IgnoreUnknown": "1", "IP": "10.0.0.5"}),
    ("FOO=BAR;ABC=123", {"FOO": "BAR", "ABC": "123"}),   # section 2's own example
    ("IP=10.0.0.5/24", {"IP": "10.0.0.5/24"}),
    ("", {}),
])
def test_cni_args_parsed(text, want):
    req = spec.read_request(env_for("ADD", CNI_ARGS=text), conf_bytes())
    assert req.args == want


@pytest.mark.parametrize("text", ["novalue", "IgnoreUnknown=1;novalue", "=x", "IP"])
def test_cni_args_pair_without_key_or_value_is_code_4_naming_it(text):
    details = refused(env_for("ADD", CNI_ARGS=text), conf_bytes(), 4)
    assert "CNI_ARGS" in details


# --- spec.render_result ----------------------------------------------------------------------

IFACES = [{"name": "br0", "mac": "02:00:00:00:00:01"},
          {"name": "vc0ffee", "mac": "02:00:00:00:00:02"},
          {"name": "eth0", "mac": "02:00:00:00:00:03", "mtu": 1450,
           "sandbox": "/run/netns/cni-1234"}]
IPS = [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 2}]
ROUTES = [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}]
DNS = {"nameservers": ["10.244.0.10"], "search": ["svc.example"]}

# The interfaces as 0.3.x, 0.4.0 and 1.0.0 know them: no "mtu" key (1.1.0 added it).
IFACES_NO_MTU = [{"name": "br0", "mac": "02:00:00:00:00:01"},
                 {"name": "vc0ffee", "mac": "02:00:00:00:00:02"},
                 {"name": "eth0", "mac": "02:00:00:00:00:03", "sandbox": "/run/netns/cni-1234"}]


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_render_before_1_0_0_tags_each_ip_with_its_version(version):
    got = spec.render_result(version, IFACES, IPS, ROUTES, None)
    assert got == {
        "cniVersion": version,
        "interfaces": IFACES_NO_MTU,
        "ips": [{"version": "4", "address": "10.244.1.5/24", "gateway": "10.244.1.1",
                 "interface": 2}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
    }


def test_render_1_0_0_has_no_ip_version_and_no_interface_mtu():
    assert spec.render_result("1.0.0", IFACES, IPS, ROUTES, None) == {
        "cniVersion": "1.0.0",
        "interfaces": IFACES_NO_MTU,
        "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 2}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
    }


def test_render_1_1_0_has_the_interface_mtu():
    assert spec.render_result("1.1.0", IFACES, IPS, ROUTES, None) == {
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "br0", "mac": "02:00:00:00:00:01"},
                       {"name": "vc0ffee", "mac": "02:00:00:00:00:02"},
                       {"name": "eth0", "mac": "02:00:00:00:00:03", "mtu": 1450,
                        "sandbox": "/run/netns/cni-1234"}],
        "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 2}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
    }


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_render_has_dns_only_when_given(version):
    with_dns = spec.render_result(version, IFACES, IPS, ROUTES, DNS)
    assert with_dns["dns"] == {"nameservers": ["10.244.0.10"], "search": ["svc.example"]}
    assert "dns" not in spec.render_result(version, IFACES, IPS, ROUTES, None)
    assert set(with_dns) == {"cniVersion", "interfaces", "ips", "routes", "dns"}


def test_render_leaves_its_inputs_alone():
    # would catch: the per-version trimming done in place (a caller's lists reused)
    ifaces, ips = json.loads(json.dumps(IFACES)), json.loads(json.dumps(IPS))
    spec.render_result("0.3.1", ifaces, ips, ROUTES, None)
    spec.render_result("1.0.0", ifaces, ips, ROUTES, None)
    assert ifaces == IFACES and ips == IPS


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0"])
def test_render_before_1_0_0_tags_an_ipv6_address_6(version):
    # spec 0.4.0, section "Result": "version (string): either "4" or "6" and corresponds
    # to the IP version of the addresses in the entry". An IPv6 entry reaches
    # render_result from a chained ADD's prevResult (plugin._merge strips the old tags and
    # lets render_result put them back). Would catch: every entry tagged "4".
    ips = [{"address": "fd00:10::5/64", "gateway": "fd00:10::1", "interface": 0},
           {"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 2}]
    got = spec.render_result(version, IFACES, ips, ROUTES, None)
    assert got["ips"] == [
        {"version": "6", "address": "fd00:10::5/64", "gateway": "fd00:10::1", "interface": 0},
        {"version": "4", "address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 2}]


# --- spec.version_result and CniError.document -----------------------------------------------

@pytest.mark.parametrize("version", ["1.1.0", "1.0.0", "0.3.0"])
def test_version_result_shape(version):
    # Section 5, VERSION success: exactly cniVersion (echoed) and supportedVersions
    assert spec.version_result(version) == {"cniVersion": version,
                                            "supportedVersions": ANNOUNCED}


# Section 5's table, each code's description (the msg is "a short message
# characterizing the error": the table's words, at most extended).
TABLE = {1: "Incompatible CNI version", 2: "Unsupported field in network configuration",
         3: "Container unknown or does not exist",
         4: "Invalid necessary environment variables", 5: "I/O failure",
         6: "Failed to decode content", 7: "Invalid network config", 11: "Try again later",
         50: "The plugin is not available"}


@pytest.mark.parametrize("code", sorted(TABLE))
def test_error_document_shape_for_well_known_codes(code):
    doc = CniError(code, "what went wrong, in full").document("0.4.0")
    assert set(doc) == {"cniVersion", "code", "msg", "details"}
    assert doc["cniVersion"] == "0.4.0"
    assert doc["code"] == code and type(doc["code"]) is int
    assert doc["details"] == "what went wrong, in full"
    assert doc["msg"].lower().startswith(TABLE[code].lower()), doc["msg"]
    assert json.loads(json.dumps(doc)) == doc


@pytest.mark.parametrize("code", [100, 101, 102, 199])
def test_error_document_for_plugin_codes_has_a_short_msg(code):
    # codes 100+ are the plugin's own: still a msg, a short one, and the details apart
    doc = CniError(code, "the long story").document("1.1.0")
    assert set(doc) == {"cniVersion", "code", "msg", "details"}
    assert doc["code"] == code and doc["details"] == "the long story"
    assert isinstance(doc["msg"], str) and doc["msg"].strip() and "\n" not in doc["msg"]


# --- netconf.read_conf -----------------------------------------------------------------------

def base_conf(**keys) -> dict:
    doc = {"cniVersion": "1.1.0", "name": "podnet", "type": "vtep"}
    doc.update(keys)
    return doc


def conf_refused(config: dict, code: int) -> str:
    with pytest.raises(CniError) as info:
        netconf.read_conf(config)
    assert info.value.code == code, (info.value.code, info.value.details)
    return info.value.details


@pytest.mark.parametrize("key,value,shown", [
    ("brigde", "br7", "br7"), ("ipam", {"type": "host-local"}, "host-local"),
    ("mtu", 1400, "1400"), ("Plan", "/etc/vtep/plan.toml", "/etc/vtep/plan.toml"),
])
def test_unknown_key_is_code_2_naming_key_and_value(key, value, shown):
    # Section 5, code 2: "The error message must contain the key and value"
    details = conf_refused(base_conf(**{key: value}), 2)
    assert key in details and shown in details


def test_ipmasq_true_is_code_2_naming_it():
    details = conf_refused(base_conf(ipMasq=True), 2)
    assert "ipMasq" in details and "true" in details


def test_ipmasq_false_is_accepted():
    assert netconf.read_conf(base_conf(ipMasq=False)).name == "podnet"


def conf_with(key, value):
    """base_conf with `key` set to `value`, or without `key` when value is None."""
    config = base_conf(**{key: value})
    if value is None:
        del config[key]
    return config


@pytest.mark.parametrize("type_", ["bridge", "VTEP", "", None, 7])
def test_type_not_vtep_is_code_7(type_):
    assert "type" in conf_refused(conf_with("type", type_), 7)


def test_plan_and_etcd_both_is_code_7():
    details = conf_refused(base_conf(plan="/etc/vtep/plan.toml",
                                     etcd="https://127.0.0.1:2379"), 7)
    assert "plan" in details and "etcd" in details


OWN_KEYS = ["plan", "etcd", "etcdPrefix", "etcdCACert", "etcdCert", "etcdKey", "node",
            "bridge", "stateDir", "device"]


@pytest.mark.parametrize("value", [5, True, None, ["x"], {"x": 1}, ""])
@pytest.mark.parametrize("key", OWN_KEYS)
def test_own_keys_must_be_non_empty_strings(key, value):
    details = conf_refused(base_conf(**{key: value}), 7)
    assert key in details


@pytest.mark.parametrize("key", ["bridge", "device"])
@pytest.mark.parametrize("name", ["abcdefghijklmnop", "br/0", "br:0", "br 0", ".", "..",
                                  "br%d"])
def test_bad_interface_name_in_config_is_code_7(key, name):
    details = conf_refused(base_conf(**{key: name}), 7)
    assert key in details


@pytest.mark.parametrize("name", [None, "", 5])
def test_network_name_missing_is_code_7(name):
    assert "name" in conf_refused(conf_with("name", name), 7)


def test_protocol_keys_are_accepted():
    # Section 1's reserved and well-known keys, and what sections 3 and 5 add at
    # execution time: none of them is the plugin's "unknown key"
    dns = {"nameservers": ["10.244.0.10"], "domain": "cluster.example"}
    config = base_conf(
        cniVersions=["1.0.0", "1.1.0"], disableCheck=True, disableGC=False,
        runtimeConfig={"ips": ["10.244.1.9/24"]}, capabilities={"ips": True},
        args={"cni": {"ips": ["10.244.1.9"]}},
        prevResult={"cniVersion": "1.1.0", "interfaces": [], "ips": []},
        **{"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}],
           "cni.dev/anything": 1}, dns=dns,
        plan="/etc/vtep/plan.toml", node="n1", bridge="br7", stateDir="/run/vtep-t",
        device="vxt0")
    conf = netconf.read_conf(config)
    assert (conf.name, conf.plan, conf.etcd, conf.node, conf.bridge, conf.state_dir,
            conf.device) == ("podnet", "/etc/vtep/plan.toml", None, "n1", "br7",
                             "/run/vtep-t", "vxt0")
    assert conf.dns == {"nameservers": ["10.244.0.10"], "domain": "cluster.example"}


def test_dns_must_be_an_object():
    assert "dns" in conf_refused(base_conf(dns=["10.244.0.10"]), 7)


# --- netconf.from_status ---------------------------------------------------------------------

DEVICE = "vxt0"   # not the default device: the file names below are written by hand


def status_doc(node="n1", pid=None, netns="self", network="default") -> dict:
    doc = {"pid": os.getpid() if pid is None else pid, "node": node, "mode": "kernel"}
    if netns == "self":
        doc["netns"] = netns_inode()
    elif netns is not None:
        doc["netns"] = netns
    if network == "default":
        network = {"subnet": "10.244.1.0/24", "gateway": "10.244.1.1",
                   "underlay_ip": "192.0.2.11", "overlay": "10.244.0.0/16", "mtu": 1450}
    if network is not None:
        doc["network"] = network
    return doc


def write_status(dirpath: Path, name: str, doc) -> Path:
    path = dirpath / name
    path.write_text(json.dumps(doc))
    return path


def status_conf(tmp_path, node=None) -> netconf.Conf:
    return netconf.Conf(name="podnet", node=node, state_dir=str(tmp_path), device=DEVICE)


@pytest.fixture
def agent():
    """A live agent's claim on DEVICE in this network namespace, as `vtep run` holds it
    (vtep.owner.Claim): what the status source takes for "the agent runs"."""
    with owner.Claim(DEVICE):
        yield


def status_refused(conf, code) -> str:
    with pytest.raises(CniError) as info:
        netconf.from_status(conf)
    assert info.value.code == code, (info.value.code, info.value.details)
    return info.value.details


@pytest.mark.parametrize("named", [False, True])
def test_from_status_happy_path(agent, tmp_path, named):
    write_status(tmp_path, "vxt0.n1.json", status_doc())
    net = netconf.from_status(status_conf(tmp_path, "n1" if named else None))
    assert net.node.name == "n1"
    assert net.subnet == ipaddress.ip_network("10.244.1.0/24")
    assert net.gateway == ipaddress.ip_address("10.244.1.1")
    assert net.node.underlay_ip == ipaddress.ip_address("192.0.2.11")
    assert net.mtu == 1450
    assert str(tmp_path / "vxt0.n1.json") in net.source


def test_from_status_ignores_other_devices_and_the_writers_temp_files(agent, tmp_path):
    # vtep.status writes "<file>.<pid>.tmp" then renames it; another device's agent has
    # its own file. Neither is a second agent of this device.
    write_status(tmp_path, "vxt0.n1.json", status_doc())
    write_status(tmp_path, f"vxt0.n1.json.{os.getpid()}.tmp", status_doc(node="n2"))
    write_status(tmp_path, "vxlan0.n2.json", status_doc(node="n2"))
    assert netconf.from_status(status_conf(tmp_path)).node.name == "n1"


def test_from_status_dead_pid_is_code_11(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=60)   # reaped: its pid names no process now
    write_status(tmp_path, "vxt0.n1.json", status_doc(pid=child.pid))
    details = status_refused(status_conf(tmp_path), 11)
    assert str(child.pid) in details


def test_from_status_a_zombie_agent_is_code_11(tmp_path):
    """An agent killed with SIGKILL whose parent is gone is a zombie until init reaps
    it: kill(pid, 0) still succeeds, but nothing runs."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child never exited"
            time.sleep(0.01)
        os.kill(child.pid, 0)   # still "exists": the case a plain liveness check misses
        write_status(tmp_path, "vxt0.n1.json", status_doc(pid=child.pid))
        assert str(child.pid) in status_refused(status_conf(tmp_path), 11)
    finally:
        child.wait(timeout=60)


@pytest.mark.parametrize("node", [None, "n1"])
def test_from_status_no_file_is_code_11_naming_the_dir(tmp_path, node):
    write_status(tmp_path, "vxlan0.n1.json", status_doc())   # another device's
    details = status_refused(status_conf(tmp_path, node), 11)
    assert str(tmp_path) in details


def test_from_status_two_files_without_node_is_code_7_listing_both(agent, tmp_path):
    write_status(tmp_path, "vxt0.n1.json", status_doc(node="n1"))
    write_status(tmp_path, "vxt0.n2.json", status_doc(node="n2"))
    details = status_refused(status_conf(tmp_path), 7)
    assert "vxt0.n1.json" in details and "vxt0.n2.json" in details
    assert "node" in details
    # naming the node settles it
    assert netconf.from_status(status_conf(tmp_path, "n2")).node.name == "n2"


@pytest.mark.parametrize("doc", [
    status_doc(network=None),                                        # an older agent
    status_doc(network={"subnet": "10.244.1.0/24", "underlay_ip": "192.0.2.11"}),  # no mtu
    status_doc(network={"subnet": "not-a-subnet", "underlay_ip": "192.0.2.11", "mtu": 1450}),
    status_doc(network="10.244.1.0/24"),
    ["not", "an", "object"],
])
def test_from_status_file_without_network_facts_is_code_11(tmp_path, doc):
    write_status(tmp_path, "vxt0.n1.json", doc)
    details = status_refused(status_conf(tmp_path), 11)
    assert "vxt0.n1.json" in details


def test_from_status_file_not_json_is_code_11(tmp_path):
    (tmp_path / "vxt0.n1.json").write_text('{"pid": ')
    status_refused(status_conf(tmp_path), 11)


def test_from_status_another_netns_is_code_7(agent, tmp_path):
    write_status(tmp_path, "vxt0.n1.json", status_doc(netns=netns_inode() + 1))
    details = status_refused(status_conf(tmp_path), 7)
    assert "namespace" in details


# --- main.main() as the runtime runs it --------------------------------------------------------

# main.py has no `if __name__ == "__main__"` guard: run its main() the way the
# console-script wrapper does.
MAIN = "import sys; from vtep.cni.main import main; sys.exit(main())"


def plugin_env(**cni) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CNI_") and k != "VTEP_CNI_DEBUG"}
    env["PYTHONPATH"] = str(ROOT)
    env.update(cni)
    return env


def run_plugin(env: dict, stdin: bytes, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", MAIN, *argv], input=stdin, env=env,
                          capture_output=True, timeout=60, cwd=ROOT)


def one_json_object(stdout: bytes) -> dict:
    text = stdout.decode()
    doc, end = json.JSONDecoder().raw_decode(text.lstrip())
    assert text.lstrip()[end:].strip() == "", text
    assert isinstance(doc, dict)
    return doc


def assert_error(proc: subprocess.CompletedProcess, code: int, version: str) -> dict:
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert "Traceback" not in out + err, err
    assert proc.returncode == 1, (proc.returncode, err)
    doc = one_json_object(proc.stdout)
    assert set(doc) == {"cniVersion", "code", "msg", "details"}, doc
    assert doc["code"] == code and doc["cniVersion"] == version, doc
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith("vtep-cni: "), err
    return doc


@pytest.mark.parametrize("version", ["1.1.0", "0.3.1", "9.9.9"])
def test_main_version_prints_the_version_result(version):
    proc = run_plugin(plugin_env(CNI_COMMAND="VERSION"),
                      json.dumps({"cniVersion": version}).encode())
    assert proc.returncode == 0, proc.stderr
    assert one_json_object(proc.stdout) == {"cniVersion": version,
                                            "supportedVersions": ANNOUNCED}
    assert proc.stderr == b""


@pytest.mark.parametrize("cni,stdin,code,version", [
    ({}, conf_bytes("1.0.0"), 4, "1.0.0"),                                 # no CNI_COMMAND
    ({"CNI_COMMAND": "ADD"}, conf_bytes("0.4.0"), 4, "0.4.0"),            # no variables
    ({"CNI_COMMAND": "ADD", **FULL_ENV}, b"{nope", 6, "1.1.0"),
    ({"CNI_COMMAND": "ADD", **FULL_ENV}, conf_bytes("9.9.9"), 1, "1.1.0"),
    ({"CNI_COMMAND": "ADD", **FULL_ENV}, conf_bytes("1.0.0", brigde="br7"), 2, "1.0.0"),
    ({"CNI_COMMAND": "DEL", **FULL_ENV}, conf_bytes("0.3.1", type="bridge"), 7, "0.3.1"),
    ({"CNI_COMMAND": "CHECK", **FULL_ENV}, conf_bytes("0.3.1"), 1, "0.3.1"),
    ({"CNI_COMMAND": "STATUS"}, conf_bytes("1.1.0", plan="/nonexistent/vtep-plan.toml"),
     50, "1.1.0"),
], ids=["no-command", "no-variables", "not-json", "unknown-version", "unknown-key",
        "wrong-type", "check-0.3.1", "status-no-plan"])
def test_main_error_is_one_json_object_and_one_stderr_line(cni, stdin, code, version):
    # Section 2 "Errors" and section 5 "Error": non-zero exit, the error object on stdout
    # answered in the config's version when it has a usable one
    doc = assert_error(run_plugin(plugin_env(**cni), stdin), code, version)
    assert doc["details"].strip()


def test_main_stdin_nested_beyond_the_parsers_depth_is_an_error_object():
    # would catch: json's RecursionError escaping main() as a traceback with nothing on
    # stdout (the runtime then has no error object to read)
    proc = run_plugin(plugin_env(CNI_COMMAND="ADD", **FULL_ENV), b"[" * 100_000)
    assert_error(proc, 6, "1.1.0")


def test_main_stderr_stays_one_line_when_details_hold_a_newline():
    # main.py's contract: the error "repeated as one line on stderr". A value from the
    # config (here a plan path) may carry a newline; the line must not split.
    stdin = conf_bytes("1.1.0", plan="/nonexistent/a\nb.toml")
    assert_error(run_plugin(plugin_env(CNI_COMMAND="STATUS"), stdin), 50, "1.1.0")


def _run_into_closed_pipe(env: dict, stdin: bytes) -> subprocess.CompletedProcess:
    r, w = os.pipe()
    os.close(r)   # the reader is gone before the plugin writes a byte
    try:
        return subprocess.run([sys.executable, "-c", MAIN], input=stdin, env=env,
                              stdout=w, stderr=subprocess.PIPE, timeout=60, cwd=ROOT)
    finally:
        os.close(w)


@pytest.mark.parametrize("cni,stdin", [
    ({"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.0.0"}'),
    ({"CNI_COMMAND": "ADD"}, conf_bytes("1.0.0")),   # an error object into the closed pipe
])
def test_main_stdout_closed_early_is_no_traceback(cni, stdin):
    proc = _run_into_closed_pipe(plugin_env(**cni), stdin)
    err = proc.stderr.decode()
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert proc.returncode in (0, 1), (proc.returncode, err)


def test_main_stdout_into_head_c_1_is_no_traceback():
    proc = subprocess.run(
        ["sh", "-c", f'"{sys.executable}" -c "{MAIN}" | head -c 1'],
        input=b'{"cniVersion": "1.0.0"}', env=plugin_env(CNI_COMMAND="VERSION"),
        capture_output=True, timeout=60, cwd=ROOT)
    assert proc.stdout == b"{"
    assert b"Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("arg", ["--help", "-h", "--version"])
def test_main_help_prints_the_about_line_and_exits_0(arg):
    proc = run_plugin(plugin_env(CNI_COMMAND="ADD"), b"", arg)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b""   # stdout is the runtime's: nothing but protocol there
    about = proc.stderr.decode()
    assert about.startswith("vtep-cni") and "CNI" in about and "1.1.0" in about, about
    assert "Traceback" not in about


@pytest.mark.parametrize("argv", [["--bogus"], ["ADD"], ["-x", "y"]])
def test_main_unknown_argv_exits_2(argv):
    proc = run_plugin(plugin_env(), b"", *argv)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == b"" and b"Traceback" not in proc.stderr


# --- plugin.requested_ips --------------------------------------------------------------------

def add_request(config_keys: dict, cni_args: str = "") -> spec.Request:
    env = env_for("ADD", CNI_ARGS=cni_args)
    return spec.read_request(env, conf_bytes("1.1.0", **config_keys))


@pytest.mark.parametrize("keys,args,want", [
    ({}, "", {}),
    ({}, "IgnoreUnknown=1", {}),
    ({"runtimeConfig": {"ips": ["10.244.1.9/24"]}}, "", {4: "10.244.1.9"}),
    ({"runtimeConfig": {"ips": ["10.244.1.9"]}}, "", {4: "10.244.1.9"}),
    ({}, "IgnoreUnknown=1;IP=10.244.1.9", {4: "10.244.1.9"}),
    ({}, "IP=10.244.1.9/24", {4: "10.244.1.9"}),
    ({"runtimeConfig": {"ips": ["10.244.1.9/24"]}}, "IP=10.244.1.9", {4: "10.244.1.9"}),
    ({"runtimeConfig": {"portMappings": []}}, "", {}),
    # one per family (host-local's CNI_ARGS IP=a,b; podman --ip and --ip6 as "ips")
    ({}, "IP=10.244.1.9,fd00:244:1::9", {4: "10.244.1.9", 6: "fd00:244:1::9"}),
    ({"runtimeConfig": {"ips": ["fd00:244:1::9/64", "10.244.1.9/24"]}}, "",
     {4: "10.244.1.9", 6: "fd00:244:1::9"}),
    # one IPv6 address in two spellings is one address (RFC 5952's form comes back)
    ({"runtimeConfig": {"ips": ["fd00:244:1:0:0:0:0:9"]}}, "IP=FD00:244:1::9",
     {6: "fd00:244:1::9"}),
])
def test_requested_ips(keys, args, want):
    assert plugin.requested_ips(add_request(keys, args)) == want


@pytest.mark.parametrize("keys,args,first,second", [
    ({"runtimeConfig": {"ips": ["10.244.1.9/24"]}}, "IP=10.244.1.10", "10.244.1.10", "10.244.1.9"),
    ({"runtimeConfig": {"ips": ["10.244.1.9", "10.244.1.10"]}}, "", "10.244.1.10", "10.244.1.9"),
    ({}, "IP=10.244.1.9,10.244.1.10", "10.244.1.10", "10.244.1.9"),
    ({}, "IP=fd00::9,10.244.1.9,fd00::a", "fd00::9", "fd00::a"),
])
def test_two_different_requested_ips_of_a_family_are_code_7_naming_both(keys, args, first,
                                                                         second):
    with pytest.raises(CniError) as info:
        plugin.requested_ips(add_request(keys, args))
    assert info.value.code == 7
    assert first in info.value.details and second in info.value.details


def test_a_requested_ip_that_is_no_address_is_code_7_naming_it():
    with pytest.raises(CniError) as info:
        plugin.requested_ips(add_request({}, "IP=10.244.1.x"))
    assert info.value.code == 7 and "10.244.1.x" in info.value.details


@pytest.mark.parametrize("keys,args", [
    ({}, "IP=fd00:244:1::99%eth0"),
    ({"runtimeConfig": {"ips": ["fd00:244:1::99%eth0/64"]}}, ""),
])
def test_a_requested_ipv6_address_with_a_zone_is_code_7(keys, args):
    # Python's ip_address keeps "%eth0" in the text: accepted, it dodged the "taken"
    # comparison (two containers got fd00:244:1::99) and made "…%eth0/64" a result address
    with pytest.raises(CniError) as info:
        plugin.requested_ips(add_request(keys, args))
    assert info.value.code == 7
    assert info.value.details == ("static address 'fd00:244:1::99%eth0' carries a zone (%eth0): "
                                  "a zone means nothing in the overlay")


def test_from_status_trusts_the_claim_not_the_pid_in_the_file(agent, tmp_path):
    """An agent in a container of its own wrote its pid as its PID namespace numbers it
    (1, say): what counts is that an agent claims the device in this network namespace."""
    write_status(tmp_path, "vxt0.n1.json", status_doc(pid=1))
    assert netconf.from_status(status_conf(tmp_path)).node.name == "n1"


# --- dual stack (issue 15): results, the status source, the routes per interface ------------

DUAL_IPS = [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 2},
            {"address": "fd00:244:1::5/64", "gateway": "fd00:244:1::1", "interface": 2}]
DUAL_ROUTES = [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}, {"dst": "::/0", "gw": "fd00:244:1::1"}]


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_render_1_x_dual_stack_has_no_ip_version(version):
    # spec 1.0.0 removed IPConfig's "version": an IPv6 entry is the same shape as an IPv4 one
    got = spec.render_result(version, IFACES, DUAL_IPS, DUAL_ROUTES, None)
    assert got["ips"] == [
        {"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 2},
        {"address": "fd00:244:1::5/64", "gateway": "fd00:244:1::1", "interface": 2}]
    assert got["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"},
                             {"dst": "::/0", "gw": "fd00:244:1::1"}]


DUAL_NETWORK = {"subnet": "10.244.1.0/24", "gateway": "10.244.1.1", "overlay": "10.244.0.0/16",
                "subnet6": "fd00:244:1::/64", "gateway6": "fd00:244:1::1",
                "overlay6": "fd00:244::/48", "underlay_ip": "192.0.2.11", "mtu": 1450}


def test_from_status_dual_stack(agent, tmp_path):
    write_status(tmp_path, "vxt0.n1.json", status_doc(network=DUAL_NETWORK))
    net = netconf.from_status(status_conf(tmp_path))
    assert net.node.subnet6 == ipaddress.ip_network("fd00:244:1::/64")
    assert net.node.gateway6 == ipaddress.ip_address("fd00:244:1::1")
    assert net.subnet == ipaddress.ip_network("10.244.1.0/24")
    # a second interface's routes: both overlays, IPv4 first
    assert net.overlays == ["10.244.0.0/16", "fd00:244::/48"]


def test_from_status_ipv6_only(agent, tmp_path):
    network = {k: v for k, v in DUAL_NETWORK.items()
               if k not in ("subnet", "gateway", "overlay")}
    write_status(tmp_path, "vxt0.n1.json", status_doc(network=network))
    net = netconf.from_status(status_conf(tmp_path))
    assert net.subnet is None and net.node.subnets == (ipaddress.ip_network("fd00:244:1::/64"),)
    assert net.overlays == ["fd00:244::/48"]


def test_from_status_with_no_subnet_of_either_family_is_code_11(agent, tmp_path):
    network = {"underlay_ip": "192.0.2.11", "mtu": 1450, "overlay6": "fd00:244::/48"}
    write_status(tmp_path, "vxt0.n1.json", status_doc(network=network))
    assert "vxt0.n1.json" in status_refused(status_conf(tmp_path), 11)


def test_an_older_agents_file_has_whole_family_overlays():
    """A status file without "overlay" (older agents): a second interface routes the
    whole IPv4 space through the overlay, as before; the same for IPv6."""
    node = netconf.planlib.Node("n1", ipaddress.ip_address("192.0.2.11"),
                                ipaddress.ip_network("10.244.1.0/24"), "",
                                subnet6=ipaddress.ip_network("fd00:244:1::/64"))
    assert netconf.NodeNet(node, 1450, "x", None, None).overlays == ["0.0.0.0/0", "::/0"]


def test_merge_re_tags_a_chained_dual_stack_prev_result():
    """A 0.4.0 chain: an earlier plugin's IPv6 entry comes tagged "6"; our result keeps
    it first, then ours, each tagged by its own family (spec 0.4.0, "Result")."""
    prev = {"cniVersion": "0.4.0", "interfaces": [{"name": "lo0"}],
            "ips": [{"version": "6", "address": "fd00:9::2/64", "interface": 0}],
            "routes": [{"dst": "fd00:9::/48"}]}
    req = spec.read_request(env_for("ADD"), conf_bytes("0.4.0", prevResult=prev))
    got = plugin._merge(req, IFACES, DUAL_IPS, DUAL_ROUTES, None)
    assert got["ips"] == [
        {"version": "6", "address": "fd00:9::2/64", "interface": 0},
        {"version": "4", "address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 3},
        {"version": "6", "address": "fd00:244:1::5/64", "gateway": "fd00:244:1::1",
         "interface": 3}]
    assert got["routes"] == [{"dst": "fd00:9::/48"}] + DUAL_ROUTES
