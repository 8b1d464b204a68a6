//! The embedded origin (SQLite in WAL mode). Being written.
