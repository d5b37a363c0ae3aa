"""Graceful drain on SIGTERM, for replicas behind a load balancer.

Stopping at once on SIGTERM (uvicorn's own behaviour) loses requests at the edges: the listening
socket closes while connections still wait in its accept queue (they are reset), and a client may
send a request on a kept-alive connection just as the server closes it. With a drain period
(``DIGITS_SHUTDOWN_DRAIN_S``), SIGTERM starts a drain instead:

1. at once, ``/readyz`` answers 503, so health-checking balancers take the replica out of
   rotation, and every response carries ``Connection: close``, so clients and proxies open their
   next connection anew (to another replica) instead of reusing one to this process;
2. the process keeps serving everything that arrives for the drain period;
3. then uvicorn's own shutdown runs: it stops accepting, finishes the requests in flight (up to
   the request timeout) and exits, killed by SIGTERM as without a drain.

A second SIGTERM during the drain, or SIGINT (Ctrl+C) at any time, stops at once. With no drain
period (the default, for a process run by hand) nothing here changes how the server stops.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("service")

# What every model reports in /readyz while the process drains.
DRAINING = "shutting down"


class Drain:
    """The drain state of one server process; ``draining`` is read by the middleware per request."""

    def __init__(self, period_s: float, models: Callable[[], Iterable[str]]) -> None:
        self.period_s = period_s
        self._models = models
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Callable[[int, Any], Any] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def begin(self) -> None:
        """Start answering /readyz with 503 and closing every connection after its response."""
        if not self.draining:
            self.draining = True
            log.info("SIGTERM: draining for %g s (/readyz answers 503, connections close after each "
                     "response), then stopping", self.period_s)

    def readiness(self) -> dict[str, Any]:
        """The /readyz body while draining: the shape of the route's own answer, every model not ready."""
        return {"ready": False, "models": dict.fromkeys(self._models(), DRAINING)}

    def install(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Take SIGTERM over from the server (uvicorn) for the drain, then hand it back.

        Returns False, changing nothing, when there is no drain period, when the server installed
        no Python handler to chain to, or outside the main thread (tests run servers in threads).
        """
        previous = signal.getsignal(signal.SIGTERM)
        if self.period_s <= 0 or not callable(previous):
            return False
        try:
            loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no SIGTERM
            log.debug("graceful drain not available in this process")
            return False
        self._loop, self._previous = loop, previous
        return True

    def uninstall(self) -> None:
        """Give SIGTERM back to the server's handler (at shutdown, or when the drain is over)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._loop is not None and self._previous is not None:
            self._loop.remove_signal_handler(signal.SIGTERM)  # resets the disposition to SIG_DFL ...
            signal.signal(signal.SIGTERM, self._previous)  # ... so put the server's handler back
            self._loop = None

    def _on_sigterm(self) -> None:
        if self.draining:  # a second SIGTERM: stop now
            log.info("SIGTERM again: stopping without waiting for the drain to end")
            self._stop()
            return
        self.begin()
        assert self._loop is not None
        self._timer = self._loop.call_later(self.period_s, self._stop)

    def _stop(self) -> None:
        previous = self._previous
        self.uninstall()
        if previous is not None:
            log.info("drain over: no longer accepting connections, finishing the requests in flight")
            previous(signal.SIGTERM, None)  # uvicorn's handler: the shutdown it would have done at once
