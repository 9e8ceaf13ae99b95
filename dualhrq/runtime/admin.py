"""A server's admin commands (`stats`, the kill switch, the patterns switch, `reload`): who may send them, what
each changes, and, on a worker of a broker, their relay to the sibling workers and the admin state the worker
takes from the broker as it joins (dualhrq.runtime.backend holds that state; dualhrq.runtime.workers the bus).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec

from dualhrq.compliance.gate import ComplianceGate
from dualhrq.config import ServeConfig
from dualhrq.errors import DataError
from dualhrq.runtime import protocol as p
from dualhrq.runtime.backend import MAX_AGE_S, SWITCHES, TIMEOUT_S, AdminState, Echo
from dualhrq.runtime.hosting import Hosting

log = logging.getLogger(__name__)

# How long an admin reply waits for the broker to pass the command on to the sibling workers (milliseconds, when
# it is up; a gateway's default timeout is 1 s).
RELAY_ACK_S = 0.25


class Relay(Protocol):
    """How a worker shares admin state with its siblings (dualhrq.runtime.workers.ControlBus): the state the
    broker holds when it joins (None: none came within timeout_s), then every relayed command in the broker's
    order, this worker's own included (``apply``'s third argument: for those, an `Echo` check; None for a
    sibling's). `publish`'s future is done once the broker has passed the command on."""

    def publish(self, cmd: str, bundle: str = "") -> asyncio.Future[None]: ...

    def teach(self, cmd: str, bundle: str = "") -> None: ...

    async def join(self, timeout_s: float) -> AdminState | None: ...

    async def listen(self, apply: Callable[[str, str, Echo | None], Awaitable[Any]],
                     held: Callable[[], AdminState]) -> None: ...


class Admin:
    """The admin state a server holds (the kill switch, in the compliance gate; `patterns_enabled`; the bundle,
    in `hosting`) and the commands that change it. `control`: a worker's relay to its siblings (None: a server
    alone). `admin_keys`: the CURVE keys that may send admin commands without a token; `stats` answers `stats`."""

    def __init__(self, serve: ServeConfig, gate: ComplianceGate, hosting: Hosting, control: Relay | None,
                 admin_keys: frozenset[str], stats: Callable[[], dict[str, Any]]) -> None:
        self.serve = serve
        self.patterns_enabled = True
        self._gate, self._hosting, self._control = gate, hosting, control
        self._admin_keys, self._stats = admin_keys, stats

    async def join(self, stopping: asyncio.Event) -> asyncio.Task | None:
        """A worker takes the admin state its broker holds (kill switch, patterns switch, reloaded bundle)
        before it loads anything, and from then on (while loading too) applies its siblings' relays: a worker
        restarted while the kill switch is on answers HOLD from its first reply, and so does every worker of a
        restarted server whose compliance store holds it on. The listening task, or None (a server alone, or
        stopped first)."""
        if self._control is None:
            return None
        while not stopping.is_set():
            state = await self._control.join(TIMEOUT_S)
            if state is not None:
                # Until a kill switch command has passed through the broker since it started, its "off" is a
                # default: the compliance store (written through by every worker) holds the operator's last.
                stored = None if state.kill_switch_set else self._gate.stored_kill_switch()
                if stored:
                    log.warning("the kill switch is on in compliance.state_path and no kill switch command has "
                                "passed through the broker since it started: kept on, and relayed to the other "
                                "workers; send kill_switch_off to clear it")
                    state = msgspec.structs.replace(state, kill_switch=True)
                self._hold(state)
                self._hosting.adopt(state.bundle, state.reloaded)
                if stored:  # so that the broker hands it over, and workers without this store hold it too
                    self._control.teach("kill_switch_on")
                log.info("admin state from the broker: kill switch %s, patterns %s, bundle %s",
                         "on" if state.kill_switch else "off", "on" if state.patterns_enabled else "off",
                         self._hosting.bundle)
                return asyncio.create_task(self._control.listen(self.apply, self.held))
            log.warning("no admin state from the broker's control bus after %.0f s (is the broker up, does it hold "
                        "the same control key, and is its clock within %.0f s of this one? a hand-over refused is "
                        "logged as such); still waiting", TIMEOUT_S, MAX_AGE_S)
        return None

    def _authorized(self, req: p.Admin, user: str | None) -> bool:
        token = req.token.encode()
        by_token = bool(token) and any(hmac.compare_digest(token, t.encode()) for t in self.serve.admin_tokens)
        return by_token or (user is not None and user in self._admin_keys)

    async def answer(self, req: p.Admin, user: str | None) -> p.Reply:
        """The reply to an admin request from `user` (its CURVE key, None without CURVE)."""
        if not self._authorized(req, user):
            log.warning("admin %s refused: no valid token or admin key", req.cmd)
            return p.ErrorReply(id=req.id, code="unauthorized", message="admin needs a valid token or admin "
                                "CURVE key", field="token")
        try:
            detail = await self.apply(req.cmd, req.bundle)
        except Exception as e:  # noqa: BLE001 - e.g. a reload of a bundle that fails verification
            log.exception("admin %s failed", req.cmd)
            return p.AdminReply(id=req.id, cmd=req.cmd, ok=False, detail={"error": f"{type(e).__name__}: {e}"})
        # NOTE: nothing awaits between the apply and the publish: an echo of this worker's previous reload,
        # waiting for the reload lock, asks whether it is still the latest as soon as it runs.
        if self._control is not None and req.cmd != "stats":
            detail["relayed"] = await self._relay(req)
        log.info("admin %s applied", req.cmd, extra={"event": "admin", "cmd": req.cmd, "detail": detail})
        return p.AdminReply(id=req.id, cmd=req.cmd, ok=True, detail=detail)

    async def _relay(self, req: p.Admin) -> bool:
        """Pass an applied command on to the sibling workers; False (logged) when the broker did not pass it on
        within RELAY_ACK_S: this worker holds it, the others may not, and the gateway should send it again."""
        assert self._control is not None
        try:
            await asyncio.wait_for(self._control.publish(req.cmd, req.bundle), RELAY_ACK_S)
            return True
        except TimeoutError:
            log.warning("admin %s: applied here, but the broker did not relay it within %.1f s (is it up?); the "
                        "other workers may not hold it: send it again", req.cmd, RELAY_ACK_S)
            return False

    async def apply(self, cmd: str, bundle: str = "", echo: Echo | None = None) -> dict[str, Any]:
        """One admin command's effect (also what a relayed command runs). ``echo``: for this worker's own
        command come back in the broker's order, re-applied so that every worker ends on the last command the
        broker passed on, unless a later one of this worker's set the same since (``echo()`` false); a reload
        then loads only if a sibling's reload came in between."""
        if cmd == "stats":
            return self._stats()
        if echo is not None and cmd in SWITCHES and not echo():
            return {}
        if cmd in SWITCHES:
            state = self.held().after(cmd)
            name = SWITCHES[cmd][0]
            self._hold(state, kill_switch_command=name == "kill_switch")
            return {name: getattr(state, name)}
        if cmd == "reload":
            return await self._hosting.reload(bundle or self._hosting.bundle, echo)
        raise DataError(f"cmd: unknown admin command {cmd!r}")

    def held(self) -> AdminState:
        """The admin state this server holds now: what it teaches a broker that rejoined with its defaults."""
        bundle, reloaded = self._hosting.held()
        return AdminState(kill_switch=self._gate.kill_switch, patterns_enabled=self.patterns_enabled,
                          bundle=bundle, reloaded=reloaded)

    def _hold(self, state: AdminState, kill_switch_command: bool = False) -> None:
        """Hold `state`'s switches. The kill switch is written to the compliance store only by a kill switch
        command or when it changes here: a patterns switch must not write this worker's value over a newer one
        (and cannot fail on the store)."""
        self.patterns_enabled = state.patterns_enabled
        if kill_switch_command or state.kill_switch != self._gate.kill_switch:
            self._gate.set_kill_switch(state.kill_switch)
