"""The contract suites inside the project's own test tree (the other way to run them).

``pytest tests/`` runs this class; the CI gate runs the suites through
``--fdpass-impl`` instead, which also writes the per-requirement report.
"""

from __future__ import annotations

# --8<-- [start:suite]
from acme_proxy import AcmeMasterProxy

from fdpass_conformance import ContractSuite


class TestAcmeMasterProxy(ContractSuite):
    factory = AcmeMasterProxy


# --8<-- [end:suite]
