"""Real servers started for tests from the test extra's wheels (no fakes, no mocks)."""
