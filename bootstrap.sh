#!/bin/sh
# Install everything vtep needs on a fresh Debian machine, as root: system
# packages with apt, Python packages into ./.venv. Idempotent and quiet when
# there is nothing to do; the README's two commands start with it.
set -eu
cd "$(dirname "$0")"

PKGS="python3 python3-venv python3-dev gcc iproute2 iputils-ping tcpdump tshark ethtool iperf3 nftables procps util-linux openvswitch-switch etcd-server podman runc containernetworking-plugins busybox-static"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "bootstrap: installing$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    # wireshark-common asks whether non-root users may capture: no.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    # Open vSwitch, etcd and podman are started by the tests themselves, inside their namespaces
    # or on loopback: their packages must not start the system services. policy-rc.d (Debian's switch for that)
    # is put in place only if the machine has none, and removed again.
    guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        guard=/usr/sbin/policy-rc.d
        trap 'rm -f "$guard"' EXIT
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
    [ -z "$guard" ] || rm -f "$guard"
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
