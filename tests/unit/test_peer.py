"""Who may change things: the pure rule, and the credentials the kernel reports over a real socket."""

import os
import socket

import pytest

from supervisor.control.peer import Peer, may_mutate, peer_of

DAEMON_UID, GROUP = 990, 2000


def no_groups(uid):
    return set()


@pytest.mark.parametrize("peer, db_groups, allowed", [
    (Peer(1, 0, 0), set(), True),                                  # root
    (Peer(1, DAEMON_UID, 5), set(), True),                         # the daemon's own user
    (Peer(1, 1000, 1000), set(), False),                           # anyone else
    (Peer(1, 1000, GROUP), set(), True),                           # primary group is the socket group
    (Peer(1, 1000, 1000, frozenset({7, GROUP})), set(), True),     # supplementary group (SO_PEERGROUPS)
    (Peer(1, 1000, 1000), {1000, GROUP}, True),                    # member per /etc/group
    (Peer(1, 1000, 1000, frozenset({7})), {1000, 8}, False),       # other groups only
])
def test_mutating_needs_root_the_daemon_user_or_the_group(peer, db_groups, allowed):
    assert may_mutate(peer, DAEMON_UID, GROUP, lambda uid: db_groups) is allowed


def test_without_a_configured_group_only_root_and_the_daemon_user_may_mutate():
    assert not may_mutate(Peer(1, 1000, GROUP, frozenset({GROUP})), DAEMON_UID, None, lambda uid: {GROUP})
    assert may_mutate(Peer(1, DAEMON_UID, 1), DAEMON_UID, None, no_groups)


def test_peer_credentials_come_from_the_kernel():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        peer = peer_of(a)
    finally:
        a.close()
        b.close()
    assert (peer.pid, peer.uid, peer.gid) == (os.getpid(), os.getuid(), os.getgid())
    assert peer.groups == frozenset(os.getgroups())
    assert peer.actor.startswith(f"uid {os.getuid()} (")
