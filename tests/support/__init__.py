"""Test support shared by the test modules: real-server fixtures and named test doubles (no server exists here)."""
