"""Process groups: every child of `srum run` (a stage, the judge server) leads its own, so stopping it
means signalling the group and waiting until no live process of it is left."""

from __future__ import annotations

import os
from typing import List


def group_members(pgid: int) -> List[int]:
    """Live (non-zombie) processes of a process group, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode("ascii", "replace")
        except OSError:
            continue
        # comm (field 2) may contain spaces and parentheses: parse after its last ')'
        rest = stat[stat.rfind(")") + 2:].split()
        state, pgrp = rest[0], int(rest[2])
        if pgrp == pgid and state != "Z":
            members.append(int(entry))
    return members


def signal_group(pgid: int, sig: int) -> None:
    """Signal every process of a group; a group that is gone (or no longer ours) is not an error."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
