//! Hushwire's wire types, shared by the server, the client library and the tools.
//!
//! No I/O lives here: everything is a pure function of bytes, so every decoder can be
//! fuzzed and unit-tested.
//!
//! # Layout
//! - [`wire`]: the protobuf messages generated from `proto/hushwire/v1/wire.proto`.
//! - [`codec`]: bounded decoding of frames and API bodies, with typed errors.
//! - [`mls`]: a small parser for the plaintext header of RFC 9420 `MLSMessage`s — all the
//!   server ever reads of a conversation.
//! - [`identity`]: handles, and the exact byte strings that account and device keys sign.
//! - [`limits`]: sizes every peer enforces.
//! - [`link`]: link codes (joining a new device to an account).
//! - [`directory`]: key directory values and signed epoch roots (key transparency).

pub mod codec;
pub mod directory;
pub mod identity;
pub mod limits;
pub mod link;
pub mod mls;
pub mod relay_link;

/// Generated protobuf types (package `hushwire.v1`).
#[allow(clippy::all, missing_docs)]
pub mod wire {
    include!(concat!(env!("OUT_DIR"), "/hushwire.v1.rs"));
}

/// The protocol version spoken by this build.
pub const PROTOCOL_VERSION: u32 = 1;

/// Content type of protobuf API bodies.
pub const PROTOBUF_CONTENT_TYPE: &str = "application/x-protobuf";
