"""The known-bad corpus: proxies with one deliberate defect each, and what must catch it.

Every public module here (a name without a leading underscore) holds one
broken proxy, derived from a reference proxy (``reference/``) by subclassing
or wrapping it, and describes itself with module-level metadata that
``tests/test_known_bad.py`` reads. A MasterProxy defect overrides the one
step of the real reference it breaks (``_create_queue``, ``_send_fd``,
``_recv_fd``...), so the corpus follows the reference as it changes, and a
step that loses its method fails the corpus test instead of going unnoticed.

``BREAKS``
    ``frozenset`` of requirement IDs that the run must report as failed
    (``fail``, or ``warn`` for a SHOULD requirement). Any other requirement
    that fails is a spurious failure, so a defect that legitimately breaks a
    second requirement lists it here too, with the reason in the docstring.
``MAY_BREAK`` (optional)
    IDs that may fail or pass, because the defect only shows when a race
    goes one way; each needs its reason in the module docstring.
``BLOCKED`` (optional)
    ``dict`` requirement ID -> the ID that must block it: requirements the
    run must report ``blocked`` (not failed) because the defect takes away a
    capability that the blocker owns and fails on (a proxy that serves
    nothing fails FP-02; what needs a served connection is blocked by FP-02).
    Any other blocked requirement, and any ``error``, is a deviation.
``IMPL`` (optional)
    The name of the zero-argument factory for ``--fdpass-impl=MODULE:IMPL``;
    without it, the one class the module defines whose name ends in ``Proxy``.
``REJECTED`` (optional)
    For a proxy that ``--fdpass-impl`` refuses at configure time (exit code 4):
    the text the one-line error must contain. Such modules are run on their
    own, never together with the others, since they stop the whole session.
``SEED`` (optional)
    The finding of the seed review (``/work/shared/seed/forklift-masterproxy-pr64.txt``)
    that the defect reproduces.

The modules are imported by the corpus test only to read this metadata; the
proxies are constructed by the inner pytest run, inside the harness, which
runs each server in its own IPC namespace and removes whatever it leaves.
"""

#: The requirements whose checks need a connection served end to end (``@needs("served")``
#: and ``require_served`` in the suites): a defect that stops all service fails FP-02 and
#: leaves these blocked by it, not failed (see ``BLOCKED`` above).
SERVED_CHECKS = frozenset(
    {
        "SP-09", "SP-10", "SP-11", "SP-12", "SP-13", "SP-16", "SP-17", "SP-20",
        "FP-04", "FP-05", "FP-06", "FP-07", "FP-08", "FP-10", "FP-12", "FP-13", "FP-14",
        "IPC-07", "IPC-08", "IPC-10",
        "FLT-01", "FLT-02", "FLT-03", "FLT-04", "FLT-05", "FLT-06",
    }
)  # fmt: skip
