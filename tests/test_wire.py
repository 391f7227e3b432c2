"""web/wire.py: a text frame encoded once is the frame websockets would have written, byte
for byte, at every length boundary of the header."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode

from web.wire import frame_size, text_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 100_000])
def test_text_frame_is_websockets_server_frame(size: int) -> None:
    text = "é" * (size // 2) + "x" * (size % 2)  # two UTF-8 bytes a character
    assert len(text.encode()) == size
    expected = Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])
    assert text_frame(text) == expected


def test_the_same_text_is_encoded_once_and_a_different_one_again() -> None:
    text = '{"type" : "order", "seq" : 1}'
    first = text_frame(text)
    assert text_frame(text) is first
    other = "".join(['{"type" : "order", ', '"seq" : 2}'])
    assert text_frame(other) == Frame(Opcode.TEXT, other.encode()).serialize(
        mask=False, extensions=[])
    # Equal text in another object: equal bytes, encoded anew.
    again = "".join(['{"type" : "order", ', '"seq" : 1}'])
    assert again is not text and text_frame(again) == first


@pytest.mark.parametrize("limit", [1, 125, 126, 127, 4096, 65535, 65536])
def test_frames_reach_frame_size_exactly_when_their_payload_reaches_the_limit(limit: int) -> None:
    for payload in (limit - 1, limit, limit + 1):
        frame = text_frame("x" * payload)
        assert (len(frame) >= frame_size(limit)) is (payload >= limit), payload
