"""A pier plugin in Python: replies `Echo: ` + each frame.

Frames are bytes; the reply is built from bytes too, so any UTF-8 (or binary) frame comes back
exactly as it was sent. Build with `./build.sh`, serve with
`pier serve examples/python-echo/echo.wasm --framing lines`.
"""

from typing import Optional

from wit_world import exports
from wit_world.imports import log, types

PREFIX = b"Echo: "


class Handler(exports.Handler):
    """pier calls these for every connection event (see wit/plugin.wit, interface handler)."""

    def on_open(self, peer: types.Peer) -> Optional[bytes]:
        # No greeting. Raising componentize_py_types.Err(Refusal(...)) would turn the client away.
        return None

    def on_frame(self, id: int, frame: bytes) -> Optional[bytes]:
        return PREFIX + frame

    def on_close(self, id: int, reason: types.CloseReason) -> None:
        if id != 0:  # 0 is pier's load-time start-up check, not a client
            log.log(types.Level.DEBUG, f"connection {id} closed: {reason.name}")
