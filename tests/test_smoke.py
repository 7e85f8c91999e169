"""End to end in one breath: a socket, a pipe, a back-channel round trip."""

import trio

from pipe_trio import RelayServer, connect, open_pipe
from tests.support import APP_ID, APP_KEY, APP_SECRET, url_of


async def test_back_channel_round_trip(relay_server: RelayServer) -> None:
    """A back-channel message reaches the pipe and the pipe's answer reaches the socket."""
    url = url_of(relay_server)
    with trio.fail_after(10):
        async with open_pipe(url, app_id=APP_ID, key=APP_KEY, secret=APP_SECRET) as pipe:

            @pipe.sockets.on("event:eventFromBrowser")
            async def answer(socket_id: str, data: object) -> None:
                await pipe.socket(socket_id).trigger("acknowledge", {"message": "Rodger"})

            async with connect(url, APP_KEY) as client:
                await client.send_event("eventFromBrowser", {"some": "data"})
                reply = await client.next_event("acknowledge")
                assert reply.data == '{"message":"Rodger"}'
