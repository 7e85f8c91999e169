"""A backend process for the Pipe group tests: processes socket messages, reports each.

    python -m tests.workers.pipe_worker URL APP_ID KEY SECRET GROUP STATE_FILE

Prints ``READY <session> resumed=<bool>`` once connected, ``G <dropped> <seq>``
for a gap report, and one line per processed message:
``P <n> <socket_id> <seq> <redelivered 0|1> <acked_seq>``, where
``acked_seq`` is what had been acked to the relay before this message. After
each message it saves ``session last_seq`` to STATE_FILE, then prints
``S <seq>``; started again with that file present, it resumes the session
(pipe-protocol.md 6).
"""

from __future__ import annotations

import os
import sys

import trio

from pipe_proto.pipe import Gap, SocketMessage
from pipe_trio import open_pipe


def saved_state(state_file: str) -> tuple[str, int] | None:
    """The session and last processed seq an earlier run saved, if any."""
    if not os.path.exists(state_file):
        return None
    with open(state_file) as file:
        session, last_seq = file.read().split()
    return session, int(last_seq)


def save_state(state_file: str, session: str, seq: int) -> None:
    # Written whole then renamed: a SIGKILL never leaves half a file.
    with open(state_file + ".tmp", "w") as file:
        file.write(f"{session} {seq}")
    os.replace(state_file + ".tmp", state_file)


async def main(url: str, app_id: str, key: str, secret: str, group: str, state_file: str) -> None:
    resume = saved_state(state_file)
    # It saves its session to resume it after a restart: a clean exit must not leave the group.
    async with open_pipe(
        url, app_id=app_id, key=key, secret=secret, group=group, events=["socket_message"], resume=resume,
        keep_session=True,
    ) as pipe:
        print(f"READY {pipe.session} resumed={pipe.core.resumed}", flush=True)
        async for note in pipe.events(meta=True):
            message = note.notice
            if isinstance(message, Gap):
                print(f"G {message.dropped} {note.seq}", flush=True)
                continue
            if not isinstance(message, SocketMessage):
                continue
            print(f"P {message.data['n']} {message.socket_id} {note.seq} {int(note.redelivered)} {pipe.acked_seq}", flush=True)
            assert pipe.session is not None
            save_state(state_file, pipe.session, note.seq)
            print(f"S {note.seq}", flush=True)


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:7])
