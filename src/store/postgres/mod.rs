//! The PostgreSQL backend (issue 8): being written.
