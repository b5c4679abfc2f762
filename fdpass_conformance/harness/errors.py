"""The harness's own error types, in a module with no imports of its own.

The exec adapter raises and catches them too (its ProgramError is a
HarnessError; its driver ends a worker with WorkerGone); keeping them here
lets it do so without importing the server or the worker's loop.
"""

from __future__ import annotations


class HarnessError(AssertionError):
    """The server under test misbehaved in a way the harness can name (hang, crash)."""


class WorkerGone(Exception):
    """Raised by ``accept`` of an out-of-process implementation (the exec adapter) when
    the process that implements this worker is gone (killed): the worker ends quietly."""
