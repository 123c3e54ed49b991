//! Hushwire daemon (being built).
