"""Frames of fd-backed memory between processes over a Unix stream socket
(mediamem's own protocol): ``Sender``, ``Receiver``, ``Frame``, and
``pair()`` for a connected pair in one process.
"""

import socket

from ._mediamem import Frame, Receiver, Sender

__all__ = ["Sender", "Receiver", "Frame", "pair"]


def pair(**policy):
    """A connected ``(Sender, Receiver)`` over a new socket pair; ``policy``
    goes to ``Receiver``. The endpoints own duplicates of the sockets, which
    are closed here."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        return Sender(a), Receiver(b, **policy)
