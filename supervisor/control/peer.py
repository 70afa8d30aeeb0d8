"""Who is asking: the kernel's credentials of a control-socket peer, and what they may do.

Nothing the client sends is trusted for this: uid, gid and groups come from
SO_PEERCRED and SO_PEERGROUPS, taken by the kernel at connect time.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass
from typing import Callable, Optional

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13


def actor_for_uid(uid: int) -> str:
    """How a user is named in job events: ``uid 1000 (alice)``."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = "?"
    return f"uid {uid} ({name})"


@dataclass(frozen=True)
class Peer:
    """The process at the other end of a connection, as the kernel reports it."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()  # supplementary groups at connect time

    @property
    def actor(self) -> str:
        return actor_for_uid(self.uid)


def peer_of(conn: socket.socket) -> Peer:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 1024)
        groups = frozenset(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
    except OSError:  # old kernel, or more groups than fit: the group database still answers
        groups = frozenset()
    return Peer(pid, uid, gid, groups)


def database_groups(uid: int) -> set[int]:
    """The user's groups per pwd/grp (a member added since their login counts too)."""
    try:
        pw = pwd.getpwuid(uid)
        return set(os.getgrouplist(pw.pw_name, pw.pw_gid))
    except (KeyError, OSError):
        return set()


def may_mutate(peer: Peer, daemon_uid: int, group_gid: Optional[int],
               groups_of: Callable[[int], set[int]] = database_groups) -> bool:
    """Root, the daemon's own user, or a member of the configured group."""
    if peer.uid in (0, daemon_uid):
        return True
    if group_gid is None:
        return False
    return group_gid == peer.gid or group_gid in peer.groups or group_gid in groups_of(peer.uid)


def group_id(group: Optional[str]) -> Optional[int]:
    """A group name or number from config.yaml -> gid; None when none is set; KeyError for an
    unknown name (the socket's group refuses to start, the admin group just grants nothing)."""
    if group is None or str(group).strip() == "":
        return None
    group = str(group).strip()
    return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
