//! linkwork's integration tests live in `tests/it/`, one test binary, run against the
//! local stack (`make test` starts it).
