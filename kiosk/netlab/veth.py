"""A network namespace joined to this one by a plain veth pair: the simplest way to cut one
endpoint's network and give it back (the link goes down, then up), with no impairment in between.

Used by the network-loss test (tests/test_resilience.py) and its benchmark (bench/recovery.py).
Needs root, for `ip netns`.
"""

from __future__ import annotations

import asyncio


class Namespace:
    """A network namespace linked to this one by a veth pair on a private /24: the endpoint in it
    reaches the call server and the peers here through that link only, so taking the link down is a
    kiosk's network dropping."""

    def __init__(self, tag: str, subnet: int) -> None:
        self.name = f"kt{tag}"
        self.outside, self.inside = f"vk{tag}o", f"vk{tag}i"
        self.host_ip, self.ns_ip = f"10.77.{subnet}.1", f"10.77.{subnet}.2"

    async def _ip(self, *args: str, check: bool = True) -> None:
        proc = await asyncio.create_subprocess_exec(
            "ip", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        _, err = await proc.communicate()
        if check and proc.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {err.decode().strip()}")

    async def create(self) -> None:
        await self._ip("netns", "add", self.name)
        await self._ip("link", "add", self.outside, "type", "veth", "peer", "name", self.inside)
        await self._ip("link", "set", self.inside, "netns", self.name)
        await self._ip("addr", "add", f"{self.host_ip}/24", "dev", self.outside)
        await self._ip("link", "set", self.outside, "up")
        for args in (
            ("addr", "add", f"{self.ns_ip}/24", "dev", self.inside),
            ("link", "set", self.inside, "up"),
            ("link", "set", "lo", "up"),
        ):
            await self._ip("netns", "exec", self.name, "ip", *args)

    async def link(self, up: bool) -> None:
        """Take the link down (the kiosk's network drops) or bring it back."""
        await self._ip("link", "set", self.outside, "up" if up else "down")

    async def delete(self) -> None:
        """Remove the pair and the namespace; quiet about parts already gone."""
        await self._ip("link", "del", self.outside, check=False)
        await self._ip("netns", "del", self.name, check=False)
