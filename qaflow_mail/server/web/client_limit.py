"""How often one client may do something costly (send a confirmation from a form): a sliding window per client
network, in memory. One gateway process serves the web, so memory is the whole picture; a restart forgets,
which the per-address limits in the database (services.membership) make harmless."""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from collections.abc import Callable
from time import monotonic

IPV6_NETWORK_BITS = 64  # one IPv6 host commonly holds a whole /64


def client_key(remote: str | None) -> str:
    """The client a request counts against: its IPv4 address, or its IPv6 /64."""
    if not remote:
        return "unknown"
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        return str(ipaddress.IPv6Network((address, IPV6_NETWORK_BITS), strict=False))
    return str(address)


class ClientLimiter:
    """At most ``limit`` events per client in any ``window`` seconds. Remembers at most ``max_clients`` clients,
    forgetting the longest-idle first, so a flood from many addresses cannot grow it without bound."""

    def __init__(self, limit: int, window: float, *, clock: Callable[[], float] = monotonic,
                 max_clients: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.max_clients = max_clients
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def allow(self, client: str) -> bool:
        """Count one event for ``client``; False (and not counted) when it already had ``limit`` in the window."""
        now = self.clock()
        events = self._events.pop(client, None)
        if events is None:
            events = deque()
        while events and events[0] <= now - self.window:
            events.popleft()
        allowed = len(events) < self.limit
        if allowed:
            events.append(now)
        self._events[client] = events  # most recently seen last
        while len(self._events) > self.max_clients:
            self._events.popitem(last=False)
        return allowed
