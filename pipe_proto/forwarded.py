"""The client's address behind proxies: ``X-Forwarded-For``, believed only from trusted proxies.

A relay behind nginx or a load balancer sees the proxy's address on every
connection. The proxy appends the address it received from to
``X-Forwarded-For``; anyone can write the header, so it is believed only when
the connection comes from a proxy the operator trusts
(``--trusted-proxies``), and then read from the right: each address a trusted
proxy added is skipped, and the first one that is not a trusted proxy is the
client (what a client wrote itself further left is never taken). An entry
that is not an IP address stops the walk: the address to its right is taken.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["TrustedProxies"]

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> _Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class TrustedProxies:
    """The proxies whose ``X-Forwarded-For`` is believed.

    Args:
        networks: addresses or networks (``10.0.0.0/8``, ``::1``).

    Raises:
        ValueError: one is not an address or a network.
    """

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: str | None) -> bool:
        """Whether ``address`` is a trusted proxy."""
        if not self.networks:
            return False  # the usual case, asked for every connection: no address to parse
        found = None if address is None else _address(address)
        return found is not None and self._trusted(found)

    def _trusted(self, address: _Address) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def client(self, peer: str | None, forwarded_for: Iterable[str]) -> str | None:
        """The client's address, given the connection's ``peer`` and its ``X-Forwarded-For`` headers, in order."""
        if peer is None or not self.trusts(peer):
            return peer
        hops = [hop for header in forwarded_for for hop in header.split(",") if hop.strip()]
        found = peer
        for hop in reversed(hops):
            address = _address(hop)
            if address is None:
                break
            found = str(address)
            if not self._trusted(address):
                break
        return found
