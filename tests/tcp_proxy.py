"""A TCP proxy on loopback that a test can cut and restore, to play a database going away.

`cut()` drops every open connection and stops listening (new connections are refused);
`restore()` listens again on the same port. `delay_s` slows every chunk forwarded (a slow
database). `freeze()` is a network that vanished: the open connections stay open but nothing
more goes through, either way (no FIN, no RST), until `thaw()`. Runs on its own thread and event loop.
"""

from __future__ import annotations

import asyncio
import threading

from servers import HOST, free_port


class TCPProxy:
    def __init__(self, target_host: str, target_port: int, *, port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self.delay_s = 0.0
        self.frozen = False
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"proxy-{self.port}", daemon=True)

    def start(self) -> TCPProxy:
        self._thread.start()
        self.restore()
        return self

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def restore(self) -> None:
        self._call(self._listen())

    def cut(self) -> None:
        self._call(self._cut())

    def freeze(self) -> None:
        self.frozen = True

    def thaw(self) -> None:
        self.frozen = False

    def stop(self) -> None:
        if self._thread.is_alive():
            self.frozen = False
            self._call(self._cut())
            self._call(self._settle())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, HOST, self.port, reuse_address=True)

    async def _settle(self) -> None:
        """Let the connections' tasks see their sockets aborted and finish."""
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if others:
            await asyncio.wait(others, timeout=2)

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_w}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    while self.frozen:  # held, neither forwarded nor refused
                        await asyncio.sleep(0.02)
                    if self.delay_s:
                        await asyncio.sleep(self.delay_s)
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                w.transport.abort()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        self._writers -= {writer, up_w}

    def __enter__(self) -> TCPProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
