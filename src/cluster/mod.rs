//! Cluster fan-out over NATS (issue 8): being written.
