//! Helpers shared by the integration tests live in tests/tests/common.
