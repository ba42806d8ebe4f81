//! See `tests/`: every test here needs a Kubernetes API server.
