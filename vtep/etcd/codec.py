"""etcd's v3 JSON as the gateway writes it, and the plain data we turn it into.

The gateway marshals the gRPC messages with jsonpb: bytes fields (keys, values) are
base64, int64 fields (revisions, lease IDs, counts) are decimal strings, and a field
at its zero value is left out ("succeeded" is absent when false, "kvs" when empty).
Everything here is pure: dicts in, frozen dataclasses out, and back.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass


def to_bytes(key) -> bytes:
    return key.encode() if isinstance(key, str) else bytes(key)


def b64(data) -> str:
    return base64.b64encode(to_bytes(data)).decode("ascii")


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def num(d: dict, name: str) -> int:
    return int(d.get(name) or 0)


def prefix_end(prefix) -> bytes:
    """The range_end that makes [prefix, range_end) every key starting with `prefix`:
    its last byte below 0xff plus one, the bytes after it dropped; b"\\0" (every key)
    when there is none (etcd's clientv3.GetPrefixRangeEnd has the same rule)."""
    p = bytearray(to_bytes(prefix))
    while p:
        if p[-1] < 0xFF:
            p[-1] += 1
            return bytes(p)
        p.pop()
    return b"\0"


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int      # 0 never: a kv that exists was created at some revision
    mod_revision: int
    version: int              # puts since its creation, 1 for the first
    lease: int                # 0: no lease

    @classmethod
    def from_json(cls, d: dict) -> "KeyValue":
        return cls(unb64(d.get("key")), unb64(d.get("value")), num(d, "create_revision"),
                   num(d, "mod_revision"), num(d, "version"), num(d, "lease"))


@dataclass(frozen=True)
class Range:
    kvs: tuple[KeyValue, ...]
    revision: int             # the store's revision the read saw (watch from it + 1)
    count: int                # keys in the range (more than len(kvs) under a limit)
    more: bool

    @classmethod
    def from_json(cls, d: dict) -> "Range":
        return cls(tuple(KeyValue.from_json(kv) for kv in d.get("kvs", ())),
                   num(d.get("header", {}), "revision"), num(d, "count"), bool(d.get("more")))


@dataclass(frozen=True)
class TxnResult:
    """A transaction's outcome: which branch ran, the revision after it, and one result
    per operation of that branch (a Range for a get, the deleted count for a delete,
    None for a put). `current` is the compared key as it is when a create/update/
    delete_if was refused (None if absent), so the caller can retry or give way."""
    succeeded: bool
    revision: int
    results: tuple
    current: KeyValue | None = None


def op_result(r: dict):
    if "response_range" in r:
        return Range.from_json(r["response_range"])
    if "response_delete_range" in r:
        return num(r["response_delete_range"], "deleted")
    return None


def txn_result(d: dict) -> TxnResult:
    return TxnResult(bool(d.get("succeeded")), num(d.get("header", {}), "revision"),
                     tuple(op_result(r) for r in d.get("responses", ())))


@dataclass(frozen=True)
class Lease:
    id: int
    ttl: int                  # seconds granted


@dataclass(frozen=True)
class Status:
    endpoint: str
    version: str
    db_size: int
    leader: int
    member_id: int
    revision: int
    raft_term: int
    raft_index: int

    @classmethod
    def from_json(cls, endpoint: str, d: dict) -> "Status":
        h = d.get("header", {})
        return cls(endpoint, d.get("version", ""), num(d, "dbSize"), num(d, "leader"),
                   num(h, "member_id"), num(h, "revision"), num(d, "raftTerm"),
                   num(d, "raftIndex"))


# --- transactions as data: compares and operations (etcdserverpb.Compare, RequestOp)

def _key(key, prefix: bool) -> dict:
    d = {"key": b64(key)}
    if prefix:
        d["range_end"] = b64(prefix_end(key))
    return d


def cmp_absent(key) -> dict:
    """The key does not exist (its create_revision is 0): create-if-absent."""
    return {**_key(key, False), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def cmp_mod(key, mod_revision: int) -> dict:
    """The key was last written at `mod_revision`: nobody wrote it since we read it."""
    return {**_key(key, False), "target": "MOD", "result": "EQUAL",
            "mod_revision": str(mod_revision)}


def cmp_value(key, value) -> dict:
    return {**_key(key, False), "target": "VALUE", "result": "EQUAL", "value": b64(value)}


def cmp_lease(key, lease: int) -> dict:
    return {**_key(key, False), "target": "LEASE", "result": "EQUAL", "lease": str(lease)}


def op_put(key, value, lease: int = 0) -> dict:
    d = {"key": b64(key), "value": b64(value)}
    if lease:
        d["lease"] = str(lease)
    return {"request_put": d}


def op_get(key, prefix: bool = False) -> dict:
    return {"request_range": _key(key, prefix)}


def op_delete(key, prefix: bool = False) -> dict:
    return {"request_delete_range": _key(key, prefix)}
