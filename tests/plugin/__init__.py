"""Tests of the pytest plugin: options, --fdpass-impl validation and the core fixtures."""
