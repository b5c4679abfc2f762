"""Tests of fdpass_conformance.leaks, on real kernel objects."""
