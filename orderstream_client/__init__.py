"""orderstream_client: a program's view of an orderstream server, the orders stream
(`connect`) and a copy of the orders kept by the version rule (`Book`). See docs/client.md."""

from orderstream_client.api import ApiError, fetch_orders
from orderstream_client.book import Book
from orderstream_client.stream import Stream, StreamError, StreamUnavailable, connect

__all__ = ["ApiError", "Book", "Stream", "StreamError", "StreamUnavailable", "connect",
           "fetch_orders"]
