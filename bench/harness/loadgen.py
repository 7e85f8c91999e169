"""Python side of bench/loadgen/loadgen.js: one JSON command per stdin line,
one JSON object per stdout line (see the header of loadgen.js)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

LOADGEN_DIR = Path(__file__).resolve().parent.parent / "loadgen"


def ensure_installed() -> str:
    """Path of `node`; installs the locked npm dependencies on first use."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node (>= 18.14) is required for the load generator")
    if not all((LOADGEN_DIR / "node_modules" / name).is_dir() for name in ("ws", "pusher")):
        npm = shutil.which("npm") or "npm"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=LOADGEN_DIR, check=True, stdout=subprocess.DEVNULL)
    return node


class LoadGen:
    def __init__(self, ws_base: str, key: str, conns: int, **opts: Any) -> None:
        self.args = ["--url", ws_base, "--key", key, "--conns", str(conns)]
        for name, value in opts.items():
            flag = "--" + name.replace("_", "-")
            if value is True:
                self.args.append(flag)
            elif value is not False and value is not None:
                self.args += [flag, str(value)]

    async def start(self, within: float) -> dict[str, Any]:
        """Spawns the load generator; returns its `ready` line once all connections are set up."""
        node = ensure_installed()
        self.proc = await asyncio.create_subprocess_exec(
            node, str(LOADGEN_DIR / "loadgen.js"), *self.args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=16 * 2**20,  # result lines can be long (close codes, slow consumers)
        )
        return await self._line(within)

    async def _line(self, within: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(within):
            raw = await self.proc.stdout.readline()
        if not raw:
            raise RuntimeError(f"load generator exited ({await self.proc.wait()})")
        msg: dict[str, Any] = json.loads(raw)
        if msg.get("type") == "error":
            raise RuntimeError(f"load generator: {msg}")
        return msg

    async def command(self, cmd: str, within: float = 60.0, **extra: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"cmd": cmd, **extra}) + "\n").encode())
        await self.proc.stdin.drain()
        return await self._line(within)

    async def stats(self) -> dict[str, Any]:
        return await self.command("stats")

    async def wait_delivered(self, expected: int, stall: float, poll: float = 0.1) -> dict[str, Any]:
        """Polls until `expected` deliveries have arrived, or none for `stall` seconds."""
        loop = asyncio.get_running_loop()
        last = await self.stats()
        progress_at = loop.time()
        while last["delivered"] < expected and loop.time() - progress_at < stall:
            await asyncio.sleep(poll)
            now = await self.stats()
            if now["delivered"] != last["delivered"]:
                progress_at = loop.time()
            last = now
        return last

    async def quit(self) -> None:
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(b'{"cmd":"quit"}\n')  # no reply: it just exits
                await self.proc.stdin.drain()
            except ConnectionError:
                pass
            try:
                async with asyncio.timeout(5):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
