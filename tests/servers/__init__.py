"""Real servers for tests, started from the test extra's wheels (no fakes, no mocks)."""
