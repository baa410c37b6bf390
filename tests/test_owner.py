"""Ownership of a device: the lock dies with the agent, whoever and however it ends.

Unit tests (no root): abstract unix sockets need no privilege. Each test uses a
device name of its own, so that a real agent on this host is never involved."""
import os
import signal
import subprocess
import sys

import pytest

from vtep import owner
from vtep.errors import HostMismatch

HOLDER = r"""
import sys, time
from vtep import owner
c = owner.Claim(sys.argv[1])
print("claimed", flush=True)
time.sleep(60)
"""


@pytest.fixture
def device():
    return f"vtt{os.getpid()}x"


@pytest.fixture
def agent(device):
    """Another process that claims `device` and holds it until killed."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, device], stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "claimed"
        yield p
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


def test_no_agent_means_no_holder(device):
    assert owner.holder(device) is None


def test_the_holder_is_named_by_its_pid(device, agent):
    assert owner.holder(device) == agent.pid


def test_a_second_claim_is_refused_naming_the_first_agent(device, agent):
    with pytest.raises(HostMismatch) as e:
        owner.Claim(device)
    assert f"pid {agent.pid}" in str(e.value) and device in str(e.value)
    assert "\n" not in str(e.value)
    assert e.value.exit_code == 4


def test_the_lock_dies_with_a_killed_agent(device, agent):
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait(timeout=10)
    assert owner.holder(device) is None
    with owner.Claim(device):
        assert owner.holder(device) == os.getpid()
    assert owner.holder(device) is None   # released on exit


def test_another_device_is_not_locked(device, agent):
    with owner.Claim(device + "b"):
        pass


def test_refuse_if_managed_spares_our_own_claim(device, agent):
    with pytest.raises(HostMismatch, match=f"pid {agent.pid}.*not removing"):
        owner.refuse_if_managed(device, "removing it")
    with owner.Claim(device + "c"):
        owner.refuse_if_managed(device + "c", "removing it")   # ours: no error


@pytest.mark.parametrize("alias,ours", [
    ("vtep:kernel:network-1", True),
    (None, False), ("", False), ("flannel", False), ("my vtep: device", False)])
def test_made_by_vtep_reads_the_alias_prefix(alias, ours):
    assert owner.made_by_vtep(alias) is ours


def test_the_alias_names_mode_and_node_and_fits_ifaliasz():
    assert owner.alias("network-1", "userspace") == "vtep:userspace:network-1"
    assert len(owner.alias("n" * 300, "kernel").encode()) < 256   # IFALIASZ, with the NUL
