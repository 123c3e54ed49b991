//! Hushwire webapp (being built).
