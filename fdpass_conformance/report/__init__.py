"""Per-requirement results: gathered from pytest's reports, shown and written."""
