"""Rung ``epoll``: Linux's scalable readiness API.

Seed concept: the article's readiness models (``select``, ``WSAAsyncSelect``,
``WSAEventSelect``) at scale — the kernel keeps the interest set, so a wait costs O(ready), not
O(connections). Windows has no direct twin (its scalable answer is the completion port, higher
on the ladder); this rung is the readiness model done right, the baseline every Linux event
loop (asyncio, uvloop, nginx) is built on. Linux mechanism: ``epoll(7)``, level-triggered.

Trait kept: **one interest set** registered once per socket and changed only when interest
changes; **O(ready) wake-ups**. Level-triggered (not edge-triggered) because the shared
transport may stop reading mid-stream (``pause_reading``) and must find unread data again on
resume without a spurious read.
"""

from __future__ import annotations

import select
from collections.abc import Iterator
from typing import Any

from .reactor import Listener, ReactorRung

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_ERR = select.EPOLLERR | select.EPOLLHUP
_DETACHED = -1  # mask of an fd taken out of the epoll set after HUP with no interest


class EpollRung(ReactorRung):
    name = "epoll"
    seed = "readiness at scale (select/WSAAsyncSelect/WSAEventSelect done right)"
    windows_api = "(none: Windows scales with completion ports instead)"
    mechanism = "epoll(7), level-triggered, one interest set"
    trait = "kernel-held interest set registered once per socket; O(ready) wake-ups"
    rank = 50

    def __init__(self, core: Any) -> None:
        super().__init__(core)
        self._ep = select.epoll()
        self._by_fd: dict[int, Any] = {}
        self._mask: dict[int, int] = {}

    def _watch_wakeup(self) -> None:
        self._ep.register(self._wakefd, _IN)
        self._by_fd[self._wakefd] = None

    def _watch(self, obj: Any, read: bool, write: bool) -> bool:
        fd = obj.fd if type(obj) is Listener else obj._fd
        mask = (_IN if read else 0) | (_OUT if write else 0)
        old = self._mask.get(fd)
        if old == _DETACHED and not mask:
            return True
        if old is None or (old == _DETACHED and mask):
            self._ep.register(fd, mask)
            self._by_fd[fd] = obj
        elif old != mask and old != _DETACHED:
            self._ep.modify(fd, mask)
        self._mask[fd] = mask
        return True

    def _unwatch(self, obj: Any) -> None:
        fd = obj.fd if type(obj) is Listener else obj._fd
        old = self._mask.pop(fd, None)
        if old is not None:
            del self._by_fd[fd]
            if old == _DETACHED:
                return
            try:
                self._ep.unregister(fd)
            except OSError:
                pass

    def _wait(self, timeout: float | None) -> Iterator[tuple[Any, bool, bool]]:
        by_fd = self._by_fd
        for fd, ev in self._ep.poll(-1 if timeout is None else timeout, 1024):
            obj = by_fd.get(fd, False)
            if obj is False:
                continue
            # HUP/ERR: let recv()/send() report the error or EOF through the usual path.
            err = bool(ev & _ERR)
            if err and not self._mask[fd]:
                # epoll reports HUP/ERR even with an empty mask; with reading paused and
                # nothing to send that would spin. Detach until interest returns.
                self._ep.unregister(fd)
                self._mask[fd] = _DETACHED
                continue
            yield obj, bool(ev & _IN) or err, bool(ev & _OUT) or err

    def _close_wait(self) -> None:
        self._ep.close()


RUNG = EpollRung
