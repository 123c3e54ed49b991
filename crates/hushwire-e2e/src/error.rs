//! Error types. OpenMLS's errors are generic over the storage error; they are pinned
//! to `rusqlite::Error` (our only storage) and wrapped here, one variant per operation.

use openmls::prelude::{
    AddMembersError, CreateMessageError, KeyPackageNewError, KeyPackageVerifyError, LibraryError,
    MergeCommitError, MergePendingCommitError, NewGroupError, ProcessMessageError, SelfUpdateError,
    WelcomeError,
};
use openmls::prelude::{
    CommitToPendingProposalsError, CreateGroupContextExtProposalError, ExportGroupInfoError,
    ExternalCommitError, LeaveGroupError, RemoveMembersError,
};

use openmls::framing::errors::{MlsMessageError, ProtocolMessageError};

type StorageError = rusqlite::Error;

/// Everything the crate can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum E2eError {
    /// The profile has no (completed) identity yet.
    #[error("no identity: create one and complete registration first")]
    NotRegistered,
    /// `create_identity` on a profile whose registration already completed.
    #[error("this profile already has a registered identity")]
    AlreadyRegistered,
    /// No conversation with this peer handle.
    #[error("unknown conversation {0:?}")]
    UnknownConversation(String),
    /// The sender's / member's account is not known yet: fetch its `AccountInfo`, call
    /// `learn_account`, then retry. Nothing was changed.
    #[error("account {0:?} is not known yet; fetch it and call learn_account")]
    NeedAccount(String),
    /// Several accounts are not known yet (e.g. the members of a group a Welcome joins):
    /// fetch every one, call `learn_account` for each, then retry. Nothing was changed.
    #[error("accounts {0:?} are not known yet; fetch them and call learn_account")]
    NeedAccounts(Vec<String>),
    /// A contact's account key differs from the one pinned on first use.
    #[error("the account key of {handle:?} changed since it was first seen")]
    IdentityChanged {
        /// The contact's handle.
        handle: String,
    },
    /// The server's key directory broke a rule this profile holds it to: its keys
    /// changed, or a signed root went backwards or forked from one seen before.
    #[error("key directory: {0}")]
    KeyDirectory(String),
    /// `provide_peer` got no key package for the peer.
    #[error("no key packages for {0:?}")]
    NoKeyPackages(String),
    /// A device certificate does not verify under its account key, or an account key is
    /// malformed.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    /// A claimed key package is malformed, has the wrong suite, or is not bound to a
    /// certified device.
    #[error("invalid key package: {0}")]
    InvalidKeyPackage(String),
    /// Input that violates the protocol (bad handle, bad message id, unexpected message...).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// An account's signed device list is invalid, older than one seen before, or was
    /// withheld after one had been seen.
    #[error("device list of {handle:?}: {reason}")]
    DeviceList {
        /// The account's handle.
        handle: String,
        /// What is wrong.
        reason: String,
    },
    /// A history archive (a linked device's history) is malformed, cut short or from
    /// another account.
    #[error("invalid history archive: {0}")]
    InvalidArchive(String),
    /// The group's policy does not allow this (e.g. a non-admin adding members).
    #[error("not allowed: {0}")]
    NotAuthorized(String),
    /// The local database failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// The profile database does not open with this key (wrong key, or not a profile
    /// database). Nothing was changed.
    #[error("the profile database {0} does not open with this key (wrong key or passphrase?)")]
    WrongKey(String),
    /// Reading or writing an encrypted backup failed: wrong recovery key, a tampered or
    /// truncated file, an unsupported version (see [`hushwire_backup::BackupError`]).
    /// A failed restore wrote nothing.
    #[error("backup: {0}")]
    Backup(#[from] hushwire_backup::BackupError),
    /// A backup is restored only into a fresh profile (no account, no conversation).
    #[error("cannot restore: {0}")]
    RestoreRefused(String),
    /// OpenMLS failed.
    #[error(transparent)]
    Mls(#[from] MlsError),
}

impl From<rusqlite::Error> for E2eError {
    fn from(e: rusqlite::Error) -> Self {
        E2eError::Storage(e.to_string())
    }
}

impl From<std::io::Error> for E2eError {
    fn from(e: std::io::Error) -> Self {
        E2eError::Storage(e.to_string())
    }
}

impl From<prost::DecodeError> for E2eError {
    fn from(e: prost::DecodeError) -> Self {
        E2eError::Storage(format!("stored protobuf does not decode: {e}"))
    }
}

/// An OpenMLS operation failed. One variant per operation, with OpenMLS's own error
/// (storage error type fixed to `rusqlite::Error`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MlsError {
    /// `MlsGroup::new_with_group_id`.
    #[error("creating a group: {0}")]
    NewGroup(#[from] NewGroupError<StorageError>),
    /// `MlsGroup::add_members`.
    #[error("adding members: {0}")]
    AddMembers(#[from] AddMembersError<StorageError>),
    /// `MlsGroup::self_update`.
    #[error("self update: {0}")]
    SelfUpdate(#[from] SelfUpdateError<StorageError>),
    /// `MlsGroup::create_message`.
    #[error("encrypting an application message: {0}")]
    CreateMessage(#[from] CreateMessageError),
    /// `MlsGroup::process_message`.
    #[error("processing a message: {0}")]
    Process(#[from] ProcessMessageError<StorageError>),
    /// `MlsGroup::merge_pending_commit`.
    #[error("merging our own commit: {0}")]
    MergePending(#[from] MergePendingCommitError<StorageError>),
    /// `MlsGroup::merge_staged_commit`.
    #[error("merging a commit: {0}")]
    MergeCommit(#[from] MergeCommitError<StorageError>),
    /// Joining from a Welcome.
    #[error("joining from a Welcome: {0}")]
    Welcome(#[from] WelcomeError<StorageError>),
    /// Building a key package.
    #[error("building a key package: {0}")]
    KeyPackageNew(#[from] KeyPackageNewError),
    /// Verifying a key package.
    #[error("verifying a key package: {0}")]
    KeyPackageVerify(#[from] KeyPackageVerifyError),
    /// Serializing an MLS message.
    #[error("serializing an MLS message: {0}")]
    Message(#[from] MlsMessageError),
    /// An MLS message that is not a framed protocol message.
    #[error("not a protocol message: {0}")]
    ProtocolMessage(#[from] ProtocolMessageError),
    /// TLS decoding.
    #[error("decoding an MLS message: {0}")]
    Codec(#[from] openmls::prelude::tls_codec::Error),
    /// An OpenMLS internal error.
    #[error("OpenMLS library error: {0}")]
    Library(#[from] LibraryError),
    /// `MlsGroup::remove_members`.
    #[error("removing members: {0}")]
    RemoveMembers(#[from] RemoveMembersError<StorageError>),
    /// `MlsGroup::leave_group`.
    #[error("leaving a group: {0}")]
    Leave(#[from] LeaveGroupError<StorageError>),
    /// `MlsGroup::update_group_context_extensions`.
    #[error("changing the group's info: {0}")]
    GroupContextExtensions(#[from] CreateGroupContextExtProposalError<StorageError>),
    /// `MlsGroup::commit_to_pending_proposals`.
    #[error("committing pending proposals: {0}")]
    CommitPending(#[from] CommitToPendingProposalsError<StorageError>),
    /// Rejoining by External Commit.
    #[error("rejoining by external commit: {0}")]
    ExternalCommit(#[from] ExternalCommitError<StorageError>),
    /// Exporting a GroupInfo.
    #[error("exporting a GroupInfo: {0}")]
    ExportGroupInfo(#[from] ExportGroupInfoError),
    /// The group is not in OpenMLS storage although our tables name it.
    #[error("group state missing from storage")]
    GroupMissing,
}

macro_rules! via_mls {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for E2eError {
            fn from(e: $t) -> Self {
                E2eError::Mls(MlsError::from(e))
            }
        }
    )*};
}

via_mls!(
    NewGroupError<StorageError>,
    AddMembersError<StorageError>,
    SelfUpdateError<StorageError>,
    CreateMessageError,
    ProcessMessageError<StorageError>,
    MergePendingCommitError<StorageError>,
    MergeCommitError<StorageError>,
    WelcomeError<StorageError>,
    KeyPackageNewError,
    KeyPackageVerifyError,
    MlsMessageError,
    ProtocolMessageError,
    openmls::prelude::tls_codec::Error,
    LibraryError,
    RemoveMembersError<StorageError>,
    LeaveGroupError<StorageError>,
    CreateGroupContextExtProposalError<StorageError>,
    CommitToPendingProposalsError<StorageError>,
    ExternalCommitError<StorageError>,
    ExportGroupInfoError,
);
