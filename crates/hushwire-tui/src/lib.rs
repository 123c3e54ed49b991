//! Hushwire tui (being built).
