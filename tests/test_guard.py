"""The local guard: one consumer per stream on this host, its lock directory and its files."""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ohip_stream import ConfigurationError, ConsumerAlreadyRunningError, _guard
from ohip_stream._guard import STALE_AFTER, StreamGuard, default_lock_dir, prepare_lock_dir


@pytest.fixture
def private_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temporary directory the default lock directory goes in, with no XDG runtime dir."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path / f"ohip-stream-{os.getuid()}"


Take = Callable[[StreamGuard], StreamGuard]


@pytest.fixture
def take() -> Iterator[Take]:
    """Acquire a guard and release it when the test ends (the in-process registry is global)."""
    taken: list[StreamGuard] = []

    def acquire(guard: StreamGuard) -> StreamGuard:
        guard.acquire()
        taken.append(guard)
        return guard

    yield acquire
    for guard in taken:
        guard.release()


@contextmanager
def holder_process(lock_dir: Path, stream_id: str, **kwargs: str) -> Iterator[None]:
    """Another process holding a guard until the block ends."""
    code = (
        "import sys, time\n"
        "from ohip_stream._guard import StreamGuard\n"
        f"g = StreamGuard({stream_id!r}, lock_dir={str(lock_dir)!r}, **{kwargs!r}); g.acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


# --- one consumer ------------------------------------------------------------------------------


def test_guard_refuses_a_second_consumer_in_the_same_process(tmp_path: Path, take: Take) -> None:
    first = take(StreamGuard("abc123", lock_dir=tmp_path))
    second = StreamGuard("abc123", lock_dir=tmp_path)
    with pytest.raises(ConsumerAlreadyRunningError, match="in this process"):
        second.acquire()
    take(StreamGuard("other", lock_dir=tmp_path))  # another stream is fine
    first.release()
    first.release()  # idempotent
    take(second)


def test_guard_refuses_from_another_thread(tmp_path: Path, take: Take) -> None:
    take(StreamGuard("threaded", lock_dir=tmp_path))
    errors: list[BaseException] = []

    def contender() -> None:
        try:
            StreamGuard("threaded", lock_dir=tmp_path).acquire()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=contender)
    thread.start()
    thread.join()
    assert len(errors) == 1
    assert isinstance(errors[0], ConsumerAlreadyRunningError)


def test_guard_refuses_another_process_and_is_freed_when_it_dies(
    tmp_path: Path, take: Take
) -> None:
    with holder_process(tmp_path, "proc"):
        with pytest.raises(ConsumerAlreadyRunningError, match="another process") as info:
            StreamGuard("proc", lock_dir=tmp_path).acquire()
        assert ", pid " in str(info.value)  # the holder's pid file names it
    guard = take(StreamGuard("proc", lock_dir=tmp_path))  # the dead process's lock is free
    assert (tmp_path / "proc.pid").read_text() == f"{os.getpid()}\n"
    guard.release()
    assert not (tmp_path / "proc.pid").exists()


# --- mixed scopes (issue 19 item 11) -----------------------------------------------------------


def test_scopes_exclude_each_other_in_one_process(tmp_path: Path, take: Take) -> None:
    whole_key = take(StreamGuard("s1", key_id="k1", scope="app_key", lock_dir=tmp_path))
    for stream in ("s1", "s2"):  # this chain, and any other chain of the key
        with pytest.raises(ConsumerAlreadyRunningError, match="in this process"):
            StreamGuard(stream, key_id="k1", lock_dir=tmp_path).acquire()
    take(StreamGuard("s3", key_id="k2", lock_dir=tmp_path))  # another key is fine
    whole_key.release()

    one_chain = take(StreamGuard("s1", key_id="k1", lock_dir=tmp_path))
    take(StreamGuard("s2", key_id="k1", lock_dir=tmp_path))  # chains side by side
    with pytest.raises(ConsumerAlreadyRunningError, match="app_key"):
        StreamGuard("s4", key_id="k1", scope="app_key", lock_dir=tmp_path).acquire()
    one_chain.release()
    with pytest.raises(ConsumerAlreadyRunningError, match="app_key"):
        StreamGuard("s4", key_id="k1", scope="app_key", lock_dir=tmp_path).acquire()  # s2 holds


@pytest.mark.parametrize(
    ("held", "wanted"),
    [
        ({"key_id": "k1", "scope": "app_key"}, {"key_id": "k1", "scope": "stream"}),
        ({"key_id": "k1", "scope": "stream"}, {"key_id": "k1", "scope": "app_key"}),
    ],
)
def test_scopes_exclude_each_other_across_processes(
    tmp_path: Path, take: Take, held: dict[str, str], wanted: dict[str, str]
) -> None:
    with holder_process(tmp_path, "s1", **held):
        for stream in ("s1", "s9"):  # the held chain, and another chain of the key
            guard = StreamGuard(stream, lock_dir=tmp_path, **wanted)  # type: ignore[arg-type]
            with pytest.raises(ConsumerAlreadyRunningError, match="another process"):
                guard.acquire()
            assert not guard.held
        # The refused attempts left nothing claimed in this process.
        take(StreamGuard("s9", key_id="k5", scope="app_key", lock_dir=tmp_path))


def test_stream_scopes_of_one_key_run_side_by_side_across_processes(
    tmp_path: Path, take: Take
) -> None:
    with holder_process(tmp_path, "s1", key_id="k1"):
        take(StreamGuard("s2", key_id="k1", lock_dir=tmp_path))


def test_guard_refuses_names_that_are_no_digests(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot name a lock file"):
        StreamGuard("../etc/x", lock_dir=tmp_path)
    with pytest.raises(ConfigurationError, match="key_id"):
        StreamGuard("s1", scope="app_key", lock_dir=tmp_path)


# --- the lock directory (issue 19 item 2) ------------------------------------------------------


def test_default_lock_dir_is_private_to_the_user(private_temp: Path, take: Take) -> None:
    assert default_lock_dir() == private_temp
    guard = take(StreamGuard("s1"))
    info = os.lstat(private_temp)
    assert stat.S_ISDIR(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o700
    assert info.st_uid == os.getuid()
    assert guard.lock_dir == private_temp
    assert (private_temp / "s1.lock").exists()


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o722])
def test_default_lock_dir_writable_by_others_is_refused(private_temp: Path, mode: int) -> None:
    private_temp.mkdir()
    private_temp.chmod(mode)
    with pytest.raises(ConfigurationError) as info:
        StreamGuard("s1").acquire()
    message = str(info.value)
    assert "writable by its group or others" in message
    assert f"remove {private_temp}" in message
    assert "lock_dir=" in message
    assert not (private_temp / "s1.lock").exists()


def test_default_lock_dir_that_is_a_symlink_is_refused(private_temp: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    private_temp.symlink_to(elsewhere)
    with pytest.raises(ConfigurationError, match="is a symbolic link"):
        prepare_lock_dir(None)


def test_default_lock_dir_that_is_a_file_is_refused(private_temp: Path) -> None:
    private_temp.write_text("x")
    with pytest.raises(ConfigurationError, match="is not a directory"):
        prepare_lock_dir(None)


@pytest.mark.skipif(os.getuid() != 0, reason="giving a directory to another user needs root")
def test_default_lock_dir_of_another_user_is_refused(private_temp: Path) -> None:
    private_temp.mkdir(mode=0o700)
    os.chown(private_temp, 65534, -1)
    with pytest.raises(ConfigurationError, match="belongs to uid 65534"):
        prepare_lock_dir(None)


def test_xdg_runtime_dir_is_used_when_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert default_lock_dir() == runtime / "ohip-stream"
    runtime.chmod(0o777)  # not private: not used
    assert default_lock_dir() == tmp_path / f"ohip-stream-{os.getuid()}"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "relative/dir")
    assert default_lock_dir() == tmp_path / f"ohip-stream-{os.getuid()}"


def test_given_lock_dir_world_writable_without_sticky_bit_is_refused(
    tmp_path: Path, take: Take
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ConfigurationError, match="no sticky bit") as info:
        StreamGuard("s1", lock_dir=shared).acquire()
    assert "chmod 2770" in str(info.value)
    shared.chmod(0o1777)  # like /tmp: others cannot replace our files
    take(StreamGuard("s1", lock_dir=shared))


def test_given_lock_dir_group_shared_is_used_and_created(tmp_path: Path, take: Take) -> None:
    shared = tmp_path / "group"
    shared.mkdir()
    shared.chmod(0o2770)
    take(StreamGuard("s1", lock_dir=shared))
    missing = tmp_path / "new" / "locks"
    take(StreamGuard("s2", lock_dir=missing))
    assert missing.is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigurationError, match="not a directory"):
        StreamGuard("s3", lock_dir=tmp_path / "file").acquire()
    with pytest.raises(ConfigurationError, match="cannot use the lock directory"):
        StreamGuard("s4", lock_dir=tmp_path / "file" / "sub").acquire()


# --- planted links and FIFOs -------------------------------------------------------------------


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text("precious\n")
    return path


def test_a_planted_symlink_is_never_followed(tmp_path: Path, victim: Path, take: Take) -> None:
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    for suffix in (".pid", ".completed"):
        (locks / f"s1{suffix}").symlink_to(victim)
    (locks / "k1.upgrades").symlink_to(victim)
    guard = take(StreamGuard("s1", key_id="k1", lock_dir=locks))
    guard.record_completed(1000.0)
    guard.record_upgrade(time.time(), 120.0)
    assert guard.last_completed() == 1000.0  # a file of its own replaced the link
    guard.release()
    assert victim.read_text() == "precious\n"
    assert not (locks / "s1.completed").is_symlink()


def test_a_planted_symlink_as_the_lock_is_refused(tmp_path: Path, victim: Path, take: Take) -> None:
    locks = tmp_path / "locks"
    locks.mkdir()
    (locks / "s1.lock").symlink_to(victim)
    with pytest.raises(ConfigurationError, match="symbolic link: refused, never followed"):
        StreamGuard("s1", lock_dir=locks).acquire()
    assert victim.read_text() == "precious\n"
    (locks / "s1.lock").unlink()
    take(StreamGuard("s1", lock_dir=locks))  # the refusal left nothing claimed


@pytest.mark.timeout(10)  # opening a FIFO that blocks would hang here
def test_a_planted_fifo_is_refused_without_blocking(tmp_path: Path, take: Take) -> None:
    os.mkfifo(tmp_path / "s1.lock")
    os.mkfifo(tmp_path / "s2.completed")
    os.mkfifo(tmp_path / "k2.upgrades")
    started = time.monotonic()
    with pytest.raises(ConfigurationError, match="not a regular file"):
        StreamGuard("s1", lock_dir=tmp_path).acquire()
    other = take(StreamGuard("s2", key_id="k2", lock_dir=tmp_path))
    assert other.last_completed() is None
    assert other.recent_upgrades(120.0, time.time()) == []
    other.record_upgrade(time.time(), 120.0)  # refused and logged, never blocking
    other.record_completed(5.0)  # replaces the FIFO with a file
    assert other.last_completed() == 5.0
    other.release()
    assert time.monotonic() - started < 2.0


# --- completion records (issue 18) -------------------------------------------------------------


def test_completion_record_round_trip(tmp_path: Path, take: Take) -> None:
    guard = StreamGuard("s1", lock_dir=tmp_path)
    guard.record_completed(50.0)  # not held: not written
    take(guard)
    assert guard.last_completed() is None
    guard.record_completed(1_000.25)
    assert guard.last_completed() == 1_000.25
    guard.record_completed(900.0)  # an older time never replaces a newer one
    assert guard.last_completed() == 1_000.25
    guard.release()
    # The next consumer of the stream reads it, whatever its own settings.
    follower = StreamGuard("s1", key_id="k1", lock_dir=tmp_path)
    assert follower.last_completed() == 1_000.25
    (tmp_path / "s1.completed").write_text("nan\n")
    assert follower.last_completed() is None
    (tmp_path / "s1.completed").write_text("garbage")
    assert follower.last_completed() is None


def test_upgrades_are_shared_by_the_streams_of_a_key(tmp_path: Path, take: Take) -> None:
    now = float(int(time.time()))  # whole seconds: the file keeps microseconds
    first = StreamGuard("s1", key_id="k1", lock_dir=tmp_path)
    first.record_upgrade(now, 120.0)  # not held: not written
    take(first)
    second = take(StreamGuard("s2", key_id="k1", lock_dir=tmp_path))
    first.record_upgrade(now - 200.0, 120.0)
    first.record_upgrade(now - 10.0, 120.0)
    second.record_upgrade(now - 5.0, 120.0)
    assert second.recent_upgrades(120.0, now) == [now - 10.0, now - 5.0]
    assert first.recent_upgrades(1000.0, now) == [now - 10.0, now - 5.0]  # 200 s ago: dropped


# --- no pile-up (issue 18) ---------------------------------------------------------------------


def test_stale_files_of_streams_nobody_holds_are_removed(tmp_path: Path, take: Take) -> None:
    now = time.time()
    old = STALE_AFTER + 60
    files = {
        "gone.lock": "",
        "gone.pid": "4242\n",
        "gone.completed": f"{now - old:.6f}\n",
        "kgone.key.lock": "",
        "kgone.upgrades": f"{now - old:.6f}\n",
        ".gone.pid.1.abcd.tmp": "",
        "recent.lock": "",
        "recent.pid": "4243\n",
        "recent.completed": f"{now - 30:.6f}\n",
        "krecent.upgrades": f"{now - 30:.6f}\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        age(tmp_path / name, old)
    age(tmp_path / "recent.completed", 30)
    live = take(StreamGuard("live", key_id="klive", lock_dir=tmp_path))
    age(tmp_path / "live.lock", old)
    age(tmp_path / "live.pid", old)

    take(StreamGuard("s1", key_id="k1", lock_dir=tmp_path))  # acquiring sweeps

    left = sorted(p.name for p in tmp_path.iterdir())
    for name in ("gone.lock", "gone.pid", "gone.completed", "kgone.key.lock", "kgone.upgrades"):
        assert name not in left
    assert ".gone.pid.1.abcd.tmp" not in left
    assert "recent.pid" not in left  # nobody holds the stream: its pid is stale
    for name in ("recent.completed", "recent.lock", "krecent.upgrades"):
        assert name in left  # the completion record still matters; so does its lock
    for name in ("live.lock", "live.pid", "klive.key.lock"):
        assert name in left  # a live holder's files are never touched
    assert live.held


def test_a_swept_lock_file_is_taken_again(tmp_path: Path, take: Take) -> None:
    guard = StreamGuard("s1", lock_dir=tmp_path)
    guard.acquire()
    guard.release()
    age(tmp_path / "s1.lock", STALE_AFTER + 60)
    take(StreamGuard("s2", lock_dir=tmp_path))
    assert not (tmp_path / "s1.lock").exists()
    take(StreamGuard("s1", lock_dir=tmp_path))
    assert (tmp_path / "s1.lock").exists()


def test_a_lock_file_removed_before_it_was_locked_is_not_trusted(
    tmp_path: Path, take: Take, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another consumer's sweep removes the free lock file between our open and our flock: the
    # lock we got is on a file nobody else will open, so the guard locks the new file instead.
    path = tmp_path / "s1.lock"
    real_flock = fcntl.flock
    swept: list[bool] = []

    def flock_after_a_sweep(fd: int, operation: int) -> None:
        if not swept:
            swept.append(True)
            path.unlink()
        real_flock(fd, operation)

    monkeypatch.setattr(_guard.fcntl, "flock", flock_after_a_sweep)
    take(StreamGuard("s1", lock_dir=tmp_path))
    monkeypatch.undo()
    assert swept
    fd = os.open(path, os.O_RDONLY)  # the file every other consumer opens is the one held
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
