"""Typed errors. The CLI alone catches them and maps them to exit codes."""
from __future__ import annotations


class VtepError(Exception):
    """Base class: a clear one-line message, and the exit code it maps to."""

    exit_code = 1


class PlanError(VtepError):
    """The cluster plan is invalid. `problems` holds one line per problem."""

    exit_code = 2

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class UsageError(VtepError):
    """The command line asks for something impossible (unknown node, bad option)."""

    exit_code = 2


class PermissionDenied(VtepError):
    """Not root / no CAP_NET_ADMIN."""

    exit_code = 3


class HostMismatch(VtepError):
    """The host does not match the plan (underlay IP not here, device missing, port taken)."""

    exit_code = 4


class Incompatible(VtepError):
    """An existing device differs from the plan in ways that need --replace."""

    exit_code = 5

    def __init__(self, device: str, diffs: list[str]):
        self.device = device
        self.diffs = diffs
        super().__init__(f"{device} exists with incompatible settings: {', '.join(diffs)} "
                         "(plan vs existing; --replace recreates it)")


class LabError(VtepError):
    """A lab step failed; the message says which."""

    exit_code = 6


class DeviceLost(VtepError):
    """A data path's device stopped answering (its TAP was deleted under it). Raised by
    the hot loop on its first failed read; the agent recreates the device in the next
    pass, as it repairs any other drift."""

    exit_code = 1


class NodeRemoved(VtepError):
    """This node was removed from the cluster's store (`vtep cluster remove`): the agent
    tears down what it made and exits."""

    exit_code = 0
