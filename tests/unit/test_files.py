"""Crash-safe file operations: whole-or-nothing file and folder writes, and the lock helper.
What a SIGKILL in the middle of them leaves is tested on a real run in test_runs_crash.py."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from modresnet import files

REPO = Path(__file__).resolve().parents[2]


def test_atomic_dir_replaces_the_folder_whole_or_not_at_all(tmp_path):
    dest = tmp_path / "last"
    with files.atomic_dir(dest) as tmp:
        (tmp / "a").write_text("1")
    assert (dest / "a").read_text() == "1" and not tmp.exists()
    with pytest.raises(OSError):
        with files.atomic_dir(dest) as tmp:
            (tmp / "a").write_text("2")
            raise OSError("disk full")
    assert (dest / "a").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_two_writers_of_one_file_never_share_a_temp_file(tmp_path):
    """Another writer's temp file sits beside the target (it is half way through its write,
    or a link someone planted): this write neither truncates it nor renames it away, and the
    file gets the mode a plain write would."""
    target = tmp_path / "metrics.jsonl"
    others = tmp_path / f".{target.name}.tmp"
    others.write_text("another writer's unfinished half")
    files.atomic_write_text(target, '{"epoch": 1}\n')
    assert target.read_text() == '{"epoch": 1}\n'
    assert others.read_text() == "another writer's unfinished half"
    assert sorted(p.name for p in tmp_path.iterdir()) == [others.name, target.name]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_concurrent_writers_each_leave_a_whole_file(tmp_path):
    target = tmp_path / "test.json"
    texts = [str(i) * 50_000 for i in range(4)]
    errors: list[BaseException] = []

    def write(text: str) -> None:
        try:
            for _ in range(50):
                files.atomic_write_text(target, text)
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and target.read_text() in texts
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


class Busy(Exception):
    pass


def test_a_held_lock_refuses_another_process_at_once(tmp_path):
    lock = tmp_path / ".lock"
    other = (
        "import sys\nfrom pathlib import Path\nfrom modresnet import files\n"
        "try:\n"
        "    with files.hold_lock(Path(sys.argv[1]), busy=RuntimeError('busy')):\n"
        "        print('acquired')\n"
        "except RuntimeError as err:\n"
        "    print(err)\n"
    )

    def in_another_process() -> str:
        out = subprocess.run(
            [sys.executable, "-c", other, str(lock)], capture_output=True, text=True, cwd=REPO
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    with files.hold_lock(lock, busy=Busy("unused")):
        assert in_another_process() == "busy"
    assert in_another_process() == "acquired"


def test_a_lock_without_busy_waits_for_the_holder(tmp_path):
    lock = tmp_path / ".lock"
    holding, release, order = threading.Event(), threading.Event(), []

    def holder() -> None:
        with files.hold_lock(lock):
            holding.set()
            release.wait()
            order.append("holder released")

    def waiter() -> None:
        with files.hold_lock(lock):
            order.append("waiter acquired")

    first = threading.Thread(target=holder)
    first.start()
    holding.wait()
    second = threading.Thread(target=waiter)
    second.start()
    second.join(timeout=0.5)
    assert second.is_alive() and order == []  # still waiting for the holder
    release.set()
    first.join()
    second.join()
    assert order == ["holder released", "waiter acquired"]
    with pytest.raises(Busy), files.hold_lock(lock):
        with files.hold_lock(lock, busy=Busy("held")):
            pass
