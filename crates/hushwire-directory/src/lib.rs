//! Key transparency for Hushwire: the server's auditable key directory and the auditor's
//! checks.
//!
//! The directory is facebook's `akd` (WhatsApp's key-transparency library) with the
//! experimental configuration under Hushwire's domain label. It maps every handle to a
//! [`DirectoryValue`](hushwire_proto::directory::DirectoryValue) (account key, device-list version and hash). The server keeps the
//! akd tree in memory and persists it as an append-only log of epochs in its store
//! ([`hushwire_store::KeyDirectory`]): each epoch record holds the updates, the root
//! hash and its signature. A node rebuilds the tree by replaying the log, which checks
//! every stored root on the way; nodes of one deployment follow each other's epochs
//! through the same log, and a node that loses a publication race rebuilds.
//!
//! # Layout
//! - [`server`]: [`KeyDirectory`], publishing and the proofs the API serves.
//! - [`audit`]: verification of append-only proofs between signed roots (the
//!   `hushwire audit` command).
//! - `worker`: the thread, at a lower CPU priority, where epochs are inserted into the
//!   tree, so a bulk epoch never takes the core from message delivery.

use hushwire_proto::directory::DOMAIN_LABEL;

pub mod audit;
pub mod server;
mod worker;

pub use server::{DirectoryError, KeyDirectory, PublishOutcome};

/// The akd configuration Hushwire uses: domain-separated hashing (blake3) under
/// [`DOMAIN_LABEL`].
pub type Config = akd::ExperimentalConfiguration<HushwireDomain>;

/// Hushwire's akd domain label.
#[derive(Debug, Clone, Copy)]
pub struct HushwireDomain;

impl akd::DomainLabel for HushwireDomain {
    fn domain_label() -> &'static [u8] {
        DOMAIN_LABEL
    }
}
