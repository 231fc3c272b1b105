"""Who can write a folder: `tune --resume` loads pickles from its experiment folder, so it
first checks that no one but this user could have put them there."""

from __future__ import annotations

import os
import stat as st
from pathlib import Path

from modresnet.errors import UserError


class UnsafeStorageError(UserError):
    """A folder whose pickles a resume would load can be changed by someone else."""


def check_private_storage(exp: Path) -> None:
    """Refuse to resume from `exp` unless only this user can have written it.

    `tune --resume` unpickles Ray's state from the experiment folder (tuner.pkl, the trials'
    state), and unpickling runs code: whoever can write a file in there, or swap the folder
    itself, runs code as the user who resumes. So every folder and file in `exp` must belong
    to this user (or root) and be writable by no one else, and the folder holding `exp` must be
    ours or root's and not writable by others (unless sticky, as /tmp, where others cannot
    rename what is ours)."""
    uid = os.geteuid()

    def problem(path: Path, info: os.stat_result, parent: bool = False) -> str | None:
        if info.st_uid not in (uid, 0):
            return f"is owned by uid {info.st_uid}, not by you (uid {uid})"
        if st.S_ISLNK(info.st_mode):  # a link's own mode means nothing; its target is checked
            return None
        if info.st_mode & 0o022 and not (parent and info.st_mode & st.S_ISVTX):
            return (
                f"is writable by {'others' if info.st_mode & 0o002 else 'its group'} "
                f"(mode {st.S_IMODE(info.st_mode):o})"
            )
        return None

    def refuse(path: Path, why: str) -> None:
        raise UnsafeStorageError(
            f"--resume: {path} {why}; resuming unpickles Ray's state from "
            f"{exp}, so whoever can write there could run code as you. "
            f"Resume only a search you wrote: after checking its contents, "
            f"chown -R {uid} {exp} && chmod -R go-w {exp}"
        )

    exp = Path(exp)
    why = problem(exp.parent, os.stat(exp.parent), parent=True)
    if why:
        refuse(exp.parent, why)
    for root, dirs, files in os.walk(exp):
        for name in [None, *dirs, *files]:
            path = Path(root) if name is None else Path(root) / name
            info = os.lstat(path)
            why = problem(path, info)
            if (
                not why
                and st.S_ISLNK(info.st_mode)
                and not os.path.realpath(path).startswith(os.path.realpath(exp) + os.sep)
            ):
                why = f"is a symlink to {os.path.realpath(path)}, outside the experiment"
            if why:
                refuse(path, why)
