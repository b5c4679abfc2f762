"""Building blocks of the server-under-test harness."""
