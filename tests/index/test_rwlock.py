"""The readers-writer lock: readers share, a writer is alone, a waiting writer goes first."""

from __future__ import annotations

import threading
import time

from index.rwlock import RWLock


def test_readers_share_the_lock() -> None:
    lock = RWLock()
    inside = threading.Barrier(3, timeout=5)

    def reader() -> None:
        with lock.read():
            inside.wait()  # all three are inside at once, or this times out

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert not inside.broken


def test_a_writer_excludes_readers_and_other_writers() -> None:
    lock = RWLock()
    events: list[str] = []
    writing = threading.Event()

    def writer() -> None:
        with lock.write():
            writing.set()
            events.append("write start")
            time.sleep(0.1)
            events.append("write end")

    def reader() -> None:
        writing.wait()
        with lock.read():
            events.append("read")

    def second_writer() -> None:
        writing.wait()
        with lock.write():
            events.append("write 2")

    threads = [threading.Thread(target=f) for f in (writer, reader, second_writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert events[:2] == ["write start", "write end"]
    assert sorted(events[2:]) == ["read", "write 2"]


def test_a_waiting_writer_is_not_starved_by_new_readers() -> None:
    lock = RWLock()
    order: list[str] = []
    first_in = threading.Event()
    release_first = threading.Event()

    def first_reader() -> None:
        with lock.read():
            first_in.set()
            release_first.wait(5)
        order.append("first reader out")

    def writer() -> None:
        with lock.write():
            order.append("writer")

    def late_reader() -> None:
        with lock.read():
            order.append("late reader")

    a = threading.Thread(target=first_reader)
    a.start()
    first_in.wait(5)
    w = threading.Thread(target=writer)
    w.start()
    deadline = time.monotonic() + 5
    while not lock._writers_waiting and time.monotonic() < deadline:
        time.sleep(0.001)
    late = threading.Thread(target=late_reader)
    late.start()
    time.sleep(0.05)
    assert order == []  # the late reader waits behind the writer
    release_first.set()
    for t in (a, w, late):
        t.join(5)
    assert order.index("writer") < order.index("late reader")
