"""FLT-05: random interleavings of traffic, kills and faults, as a Hypothesis state machine.

``ProxyMachine`` drives one server under test (a ``ProxyServer``: a forked
master running the implementation, and its workers) per Hypothesis example.
Its rules are the events of a proxy's life: a client request, a client that
is held open by its worker, data sent on a held client, a client closed, a
worker SIGKILLed, the master switched between automatic and manual dispatch,
and a fault injected into one dispatch (a failing ``sendmsg``, or a full fd
table in the master). After every step it checks the invariants named in
``INVARIANTS``; at teardown it closes the proxy in the master and checks that
nothing is left. A broken invariant raises ``InvariantViolation``, whose first
line names it; Hypothesis then shrinks the run to a short sequence of steps
and prints it, and ``run_stateful`` records it in the test's
``user_properties`` as ``fdpass_steps``.

Client model. A request is answered by a worker and then closed (EOF), or it
ends without an answer only for a reason the model knows of: no live worker
was free to take it, a worker was killed since it was sent, or a fault was
injected into its dispatch. A request sent while every live worker is busy
with a held client may wait ("pending") until a held client is closed; once
no client is held, every pending request must end within the deadline.

Runs are reproducible: the default profile uses a fixed seed, and every run
records its profile and seed in ``user_properties`` (``fdpass_hypothesis``);
``--hypothesis-seed=N`` replays the run of seed N under any profile.
"""

from __future__ import annotations

from .clients import Client
from .invariants import INV_CLIENT, INV_MASTER_FDS, INVARIANTS, InvariantViolation
from .machine import ProxyMachine
from .profiles import FIXED_SEED, PROFILE_DEFAULT, PROFILE_THOROUGH, profile_scale, resolve_profile
from .runner import StatefulRun, run_stateful

__all__ = [
    "FIXED_SEED",
    "INVARIANTS",
    "INV_CLIENT",
    "INV_MASTER_FDS",
    "PROFILE_DEFAULT",
    "PROFILE_THOROUGH",
    "Client",
    "InvariantViolation",
    "ProxyMachine",
    "StatefulRun",
    "profile_scale",
    "resolve_profile",
    "run_stateful",
]
