"""A server's WebSocket text frame as bytes (RFC 6455, section 5.2). Server frames are not
masked, so without compression one event's frame is the same bytes on every socket: it is
encoded once, and the same bytes object goes to each socket's transport."""

from __future__ import annotations

import struct

# The frame made last, by identity of its text: the hub offers one event's text to every
# subscriber of an owner in a row, so a burst to 5,000 sockets encodes it once.
_last_text: str | None = None
_last_frame = b""


def text_frame(text: str) -> bytes:
    """FIN and opcode 1 (text), the payload's length, the payload in UTF-8: what websockets'
    `send_text` puts on the wire for a server without extensions, byte for byte."""
    global _last_text, _last_frame
    if text is _last_text:
        return _last_frame
    payload = text.encode()
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    frame = header + payload
    _last_text, _last_frame = text, frame
    return frame



def frame_size(payload: int) -> int:
    """The bytes of a frame `text_frame` makes of a `payload`-byte text: a frame is at least
    this long exactly when its payload is at least that long."""
    if payload < 126:
        return payload + 2
    return payload + (4 if payload < 1 << 16 else 10)
