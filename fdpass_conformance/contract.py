"""The proxy contract as types: what an implementation must look like.

The contract is structural so that an implementation never has to import the
toolkit; these Protocols exist for type checkers and for ``check_impl``, which
names every missing member instead of failing on the first one.
"""

from __future__ import annotations

import enum
import socket
from typing import Protocol, runtime_checkable


class ProtocolType(str, enum.Enum):
    """Application protocol a listener serves; all three are TCP streams."""

    TCP = "tcp"
    HTTP = "http"
    WEBSOCKET = "websocket"

    def __str__(self) -> str:
        return self.value


@runtime_checkable
class SocketProxy(Protocol):
    """Every proxy: shared-listener strategies implement only these four."""

    def is_supported(self) -> bool: ...

    def create_socket(
        self, port: int, protocol: ProtocolType | str = ProtocolType.TCP
    ) -> socket.socket: ...

    def accept(self, listener: socket.socket) -> socket.socket: ...

    def close(self) -> None: ...


@runtime_checkable
class FdPassingProxy(SocketProxy, Protocol):
    """A proxy whose master accepts and hands each connection to a worker."""

    def open_channels(self, workers: int) -> None: ...

    def enter_worker(self, index: int) -> None: ...

    def dispatch(self, listener: socket.socket, timeout: float | None = None) -> int: ...


SOCKET_PROXY_METHODS = ("is_supported", "create_socket", "accept", "close")
FD_PASSING_METHODS = ("open_channels", "enter_worker", "dispatch")


def is_fd_passing(obj: object) -> bool:
    """The contract's rule: having ``dispatch`` makes a proxy fd-passing."""
    return hasattr(obj, "dispatch")


def check_impl(obj: object) -> list[str]:
    """Name every contract member that ``obj`` lacks or cannot call.

    An empty list means the object has the shape of the contract; whether it
    behaves accordingly is what the suites find out.
    """
    required = list(SOCKET_PROXY_METHODS)
    if is_fd_passing(obj):
        required += FD_PASSING_METHODS
    problems: list[str] = []
    for name in required:
        member = getattr(obj, name, None)
        if member is None and not hasattr(obj, name):
            problems.append(f"missing method {name}()")
        elif not callable(member):
            problems.append(f"{name} is not callable (it is {type(member).__name__})")
    return problems
