//! Client-side ring operations for the load generator (outgoing connections).
