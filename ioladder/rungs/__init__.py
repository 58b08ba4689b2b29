"""The ladder: one module per rung, registered here in the article's order.

Modules are imported lazily so that a rung whose mechanism is missing (io_uring disabled, say)
never stops the others from loading; its ``unavailable_reason()`` says why instead.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Rung

log = logging.getLogger("ioladder")

#: rung id -> module, bottom of the ladder first (the article's order).
LADDER: dict[str, str] = {
    "blocking": "ioladder.rungs.blocking",
    "select": "ioladder.rungs.select",
    "asyncselect": "ioladder.rungs.asyncselect",
    "eventselect": "ioladder.rungs.eventselect",
    "epoll": "ioladder.rungs.epoll",
    "overlapped-event": "ioladder.rungs.overlapped_event",
    "overlapped-routine": "ioladder.rungs.overlapped_routine",
    "iocp": "ioladder.rungs.iocp",
    "saea": "ioladder.rungs.saea",
}


class UnknownModel(ValueError):
    """``model=`` names no rung."""


class ModelUnavailable(RuntimeError):
    """The rung exists but its kernel mechanism cannot be used here; the message says why."""


def names() -> list[str]:
    return list(LADDER)


def get(name: str) -> type[Rung]:
    """The rung class for ``name`` (import errors surface as unavailability, not here)."""
    try:
        module = importlib.import_module(LADDER[name])
    except KeyError:
        raise UnknownModel(f"unknown model {name!r}; choose one of: {', '.join(LADDER)}, auto") \
            from None
    return module.RUNG


def reason(name: str) -> str | None:
    """None if rung ``name`` can run here, else the exact reason it cannot."""
    try:
        cls = get(name)
    except ImportError as exc:
        return f"cannot load {LADDER[name]}: {exc}"
    return cls.unavailable_reason()


def available() -> list[str]:
    return [name for name in LADDER if reason(name) is None]


def resolve(model: str) -> type[Rung]:
    """The rung class to run for ``model``; ``"auto"`` picks the best available and logs why."""
    if model == "auto":
        candidates = []
        for name in LADDER:
            why = reason(name)
            if why is None:
                candidates.append(get(name))
            else:
                log.info("auto: skipping %s: %s", name, why)
        if not candidates:
            raise ModelUnavailable("no rung is available on this machine")
        best = max(candidates, key=lambda cls: cls.rank)
        log.info("auto: chose %s (%s), the highest available rung", best.name, best.mechanism)
        return best
    why = reason(model)
    if why is not None:
        raise ModelUnavailable(f"model {model!r} is unavailable here: {why}")
    return get(model)
