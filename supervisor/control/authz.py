"""Who may act on a job: the tenancy rule of a shared server, as one pure function.

A job belongs to the uid that submitted it (the control socket's SO_PEERCRED, or the owner of
the dropped file). Changing it (stop, start, restart, edit, extend, remove, notify-test) and
reading its files through the daemon (tail, log, results) are for its owner and for the
server's admins: root, the daemon's own user and members of config.yaml's ``admin_group``.
``socket_group`` lets a user submit and act on their own jobs, no more. Reading the queue
(status, history, events, gpus) stays open to everyone who can connect.

No I/O here: the caller passes the peer's uid and every group it is in (kernel and group
database), and the admin group's gid.
"""

from __future__ import annotations

from typing import AbstractSet, Optional


def is_admin(uid: int, groups: AbstractSet[int], daemon_uid: int, admin_gid: Optional[int]) -> bool:
    """Root, the daemon's own user, or a member of ``admin_group``."""
    if uid in (0, daemon_uid):
        return True
    return admin_gid is not None and admin_gid in groups


def job_owner(owner_uid: Optional[int], daemon_uid: int) -> int:
    """A job with no recorded owner (one given on the daemon's command line, or recorded by an
    older version) is the daemon's own user's."""
    return daemon_uid if owner_uid is None else owner_uid


def may_act_on_job(uid: int, groups: AbstractSet[int], owner_uid: Optional[int], daemon_uid: int,
                   admin_gid: Optional[int]) -> bool:
    """The job's owner, or an admin."""
    return uid == job_owner(owner_uid, daemon_uid) or is_admin(uid, groups, daemon_uid, admin_gid)


def refusal(cmd: str, job: Optional[str], owner: Optional[str], actor: str, admin_group: Optional[str]) -> str:
    """The message of exit 6: whose the job is, and who else may act on it."""
    admins = f"members of admin_group ({admin_group})" if admin_group else "no admin_group is configured"
    if job is None:
        return (f"permission denied: {cmd} without a job name is for root, the daemon's user and {admins}; "
                f"{actor} may run it on their own jobs (`{cmd} NAME`)")
    return (f"permission denied: {job} is {owner}'s job; {cmd} is for its owner, root, the daemon's user "
            f"and {admins} ({actor} may only read its status and history)")
