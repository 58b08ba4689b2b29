"""Rung ``select``: the article's ``select()`` server with a socket array.

Seed concept: one thread keeps every client socket in an array, builds an ``fd_set`` from it,
calls ``select()``, then walks the array asking ``FD_ISSET`` of each slot. Windows API:
``select`` / ``FD_SET`` / ``FD_ISSET`` (Winsock); Linux mechanism: ``select(2)``.

Trait kept, with its limits:

* a fixed **slot array** with a **free-slot queue**: a new client takes a free slot, a closed
  one returns it — the array the article's server keeps;
* the interest sets are **rebuilt on every pass** from the array, so each wait costs
  O(connections) in user space and in the kernel, ready or not;
* the hard ``FD_SETSIZE`` limit (1024 on Linux): a descriptor numbered 1024 or above cannot be
  put in an ``fd_set`` at all, so such a connection is refused with a logged reason — never a
  crash, never a silent ``poll`` in disguise.
"""

from __future__ import annotations

import collections
import select
from collections.abc import Iterator
from typing import Any

from .reactor import Listener, ReactorRung

#: glibc's fd_set holds descriptors 0..1023; select(2) cannot watch any other.
FD_SETSIZE = 1024


class SelectRung(ReactorRung):
    name = "select"
    seed = "select() with a socket array"
    windows_api = "select, FD_SET, FD_ISSET"
    mechanism = "select(2), interest sets rebuilt every pass"
    trait = ("slot array + free-slot queue; fd_set rebuilt each pass (O(n) per wait); "
             f"hard FD_SETSIZE={FD_SETSIZE}: descriptors >= {FD_SETSIZE} refused with a reason")
    # A handful of slots go to the listeners and the wakeup eventfd.
    structural_limit = FD_SETSIZE - 8
    rank = 20

    def __init__(self, core: Any) -> None:
        super().__init__(core)
        # slot -> [obj, fd, want_read, want_write]; None when free.
        self._slots: list[list[Any] | None] = [None] * FD_SETSIZE
        self._free: collections.deque[int] = collections.deque(range(FD_SETSIZE))
        self._slot_of: dict[Any, int] = {}

    def _watch_wakeup(self) -> None:
        self._place(None, self._wakefd, True, False)

    def _place(self, obj: Any, fd: int, read: bool, write: bool) -> bool:
        if fd >= FD_SETSIZE or not self._free:
            return False
        slot = self._free.popleft()
        self._slots[slot] = [obj, fd, read, write]
        if obj is not None:
            self._slot_of[obj] = slot
        return True

    def _watch(self, obj: Any, read: bool, write: bool) -> bool:
        slot = self._slot_of.get(obj)
        if slot is None:
            fd = obj.fd if type(obj) is Listener else obj._fd
            return self._place(obj, fd, read, write)
        entry = self._slots[slot]
        assert entry is not None
        entry[2] = read
        entry[3] = write
        return True

    def _unwatch(self, obj: Any) -> None:
        slot = self._slot_of.pop(obj, None)
        if slot is not None:
            self._slots[slot] = None
            self._free.append(slot)

    def _wait(self, timeout: float | None) -> Iterator[tuple[Any, bool, bool]]:
        # Rebuild both sets from the slot array: the defining cost of this model.
        rlist: list[int] = []
        wlist: list[int] = []
        owner: dict[int, Any] = {}
        for entry in self._slots:
            if entry is None:
                continue
            obj, fd, read, write = entry
            if read:
                rlist.append(fd)
            if write:
                wlist.append(fd)
            if read or write:
                owner[fd] = obj
        readable, writable, _ = select.select(rlist, wlist, [], timeout)
        rset = set(readable)
        wset = set(writable)
        for fd in rset | wset:
            yield owner[fd], fd in rset, fd in wset


RUNG = SelectRung
