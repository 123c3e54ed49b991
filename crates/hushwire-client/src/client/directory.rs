//! Key transparency in the sync engine: every account the client fetches is checked
//! against the server's key directory before it is used, and the client's own entry's
//! history is checked now and then.
//!
//! - **Lookups.** [`Client::fetch_account`] and [`Client::fetch_accounts`] ask for a
//!   lookup proof of each handle (`POST /v1/directory/lookup`) and verify it against the
//!   signed root that comes with it. The proven value must back the served account
//!   ([`DirectoryValue::matches`]): same account key, same device list unless the served
//!   one is newer than the last epoch. A handle the server has not published yet is
//!   recorded as pending and checked again later ([`Client::check_directory`]).
//! - **Roots.** Each root's signature is verified; its keys are pinned on first use, and
//!   a root that goes backwards or forks from one seen before is refused
//!   ([`hushwire_e2e::Profile::accept_directory_root`]).
//! - **Own history.** [`Client::check_directory`] verifies the complete history proof of
//!   the client's own handle: every value since the handle was last released must carry
//!   this account's key, so a key the server published for us without us is noticed.

use akd_core::verify::history::{HistoryParams, HistoryVerificationParams};
use akd_core::{AkdLabel, VerifyResult};
use hushwire_proto::directory::{DirectoryValue, verify_root};
use hushwire_proto::wire;
use protobuf::Message as _;
use reqwest::Method;

use super::Client;
use crate::api::unix_ms;
use crate::{ApiRequest, ClientError};

/// Hushwire's akd domain (`hushwire_proto::directory::DOMAIN_LABEL`).
#[derive(Debug, Clone, Copy)]
struct Domain;

impl akd_core::DomainLabel for Domain {
    fn domain_label() -> &'static [u8] {
        hushwire_proto::directory::DOMAIN_LABEL
    }
}

type Config = akd_core::ExperimentalConfiguration<Domain>;

/// Handles per lookup request (the server's limit).
const LOOKUP_CHUNK: usize = 256;

/// How often [`Client::receive`] checks again while contacts' keys wait for their
/// first publication.
pub const PENDING_CHECK_PERIOD: std::time::Duration = std::time::Duration::from_secs(60);

/// How often [`Client::receive`] checks this account's own directory history.
pub const OWN_CHECK_PERIOD: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

fn kt_error(handle: &str, reason: impl std::fmt::Display) -> ClientError {
    ClientError::KeyTransparency {
        handle: handle.to_string(),
        reason: reason.to_string(),
    }
}

/// Verifies `proof` for `handle` against `root`; `None` for an empty proof (not
/// published yet).
fn verify_lookup(
    root: &wire::DirectoryRoot,
    handle: &str,
    proof: &[u8],
) -> Result<Option<DirectoryValue>, ClientError> {
    if proof.is_empty() {
        return Ok(None);
    }
    let fail = |reason: String| kt_error(handle, format!("lookup proof: {reason}"));
    let proof = akd_core::proto::specs::types::LookupProof::parse_from_bytes(proof)
        .map_err(|e| fail(e.to_string()))?;
    let proof = akd_core::LookupProof::try_from(&proof).map_err(|e| fail(e.to_string()))?;
    let root_hash = akd_core::hash::try_parse_digest(&root.root_hash).map_err(fail)?;
    let VerifyResult { value, .. } = akd_core::verify::lookup_verify::<Config>(
        &root.vrf_public_key,
        root_hash,
        root.epoch,
        AkdLabel(handle.as_bytes().to_vec()),
        proof,
    )
    .map_err(|e| fail(e.to_string()))?;
    DirectoryValue::decode(&value.0)
        .map(Some)
        .map_err(|e| fail(e.to_string()))
}

impl Client {
    /// Whether [`Client::check_directory`] is due: never done, or done more than
    /// [`OWN_CHECK_PERIOD`] ago, or it last failed.
    pub(crate) fn own_directory_check_due(&self) -> Result<bool, ClientError> {
        let Some(me) = self.profile.identity() else {
            return Ok(false);
        };
        let period = u64::try_from(OWN_CHECK_PERIOD.as_millis()).unwrap_or(u64::MAX);
        let Some(check) = self.profile.directory_check(&me.handle)? else {
            return Ok(true);
        };
        let since = unix_ms().saturating_sub(check.at_ms);
        // Contacts first used before their keys were published are checked sooner.
        let pending_period = u64::try_from(PENDING_CHECK_PERIOD.as_millis()).unwrap_or(u64::MAX);
        Ok(since >= period
            || (since >= pending_period && !self.profile.pending_directory_checks()?.is_empty()))
    }

    /// Checks a signed root and records it in the profile (pins, rollback and fork
    /// checks). When the directory moved past the epoch seen last, the server must still
    /// serve that epoch's root unchanged: a history rewritten since is refused.
    async fn accept_root(&self, root: &wire::DirectoryRoot) -> Result<(), ClientError> {
        if root.epoch > 0 {
            verify_root(root).map_err(|e| kt_error("", format!("directory root: {e}")))?;
        }
        if let Some((seen, seen_root)) = self.profile.directory_root()?
            && root.epoch > seen
        {
            let req = ApiRequest::new(
                Method::GET,
                format!("/v1/directory/roots?after={}&limit=1", seen - 1),
                Vec::new(),
            );
            let page: wire::DirectoryRoots = self.api.call(req).await?;
            let then = page.roots.into_iter().find(|r| r.epoch == seen);
            if then.is_none_or(|r| r.root_hash != seen_root) {
                return Err(kt_error(
                    "",
                    format!(
                        "the key directory's history changed: epoch {seen} is not the one seen before (fork)"
                    ),
                ));
            }
        }
        self.profile.accept_directory_root(
            &root.vrf_public_key,
            &root.signing_key,
            root.epoch,
            &root.root_hash,
        )?;
        Ok(())
    }

    /// Verifies that the key directory backs `accounts` (as the server served them):
    /// [`ClientError::KeyTransparency`] for the first one it contradicts. Handles not
    /// published yet are recorded as pending.
    pub(crate) async fn verify_accounts(
        &self,
        accounts: &[wire::AccountInfo],
    ) -> Result<(), ClientError> {
        for part in accounts.chunks(LOOKUP_CHUNK) {
            let body = wire::DirectoryLookupRequest {
                handles: part.iter().map(|a| a.handle.clone()).collect(),
            };
            let req = self.signed(ApiRequest::new(
                Method::POST,
                "/v1/directory/lookup",
                hushwire_proto::codec::encode(&body),
            ))?;
            let answer: wire::DirectoryLookupResponse = self.api.call(req).await?;
            let root = answer
                .root
                .ok_or_else(|| ClientError::Protocol("a directory lookup without a root".into()))?;
            self.accept_root(&root).await?;
            let now = unix_ms();
            for account in part {
                let handle = account.handle.as_str();
                let proof = answer
                    .lookups
                    .iter()
                    .find(|l| l.handle == handle)
                    .ok_or_else(|| kt_error(handle, "the server withheld the lookup proof"))?;
                let served =
                    DirectoryValue::of_account(&account.account_key, account.device_list.as_ref())
                        .map_err(|e| kt_error(handle, e))?;
                let epoch = match verify_lookup(&root, handle, &proof.proof)? {
                    Some(published) => {
                        published
                            .matches(&served)
                            .map_err(|e| kt_error(handle, e))?;
                        Some(root.epoch)
                    }
                    None => None,
                };
                self.profile
                    .record_directory_check(handle, &account.account_key, epoch, now)?;
            }
        }
        Ok(())
    }

    /// Checks the key directory: the complete history of this account's own entry (every
    /// key published for the handle since it was last released must be this account's),
    /// then the contacts whose keys were not published when first used. Returns the
    /// epoch checked against. [`ClientError::KeyTransparency`] names what does not hold.
    pub async fn check_directory(&mut self) -> Result<u64, ClientError> {
        let me = self
            .profile
            .identity()
            .cloned()
            .ok_or(ClientError::NotRegistered)?;
        let req = self.signed(ApiRequest::new(
            Method::GET,
            "/v1/directory/history",
            Vec::new(),
        ))?;
        let answer: wire::DirectoryHistory = self.api.call(req).await?;
        let root = answer
            .root
            .ok_or_else(|| ClientError::Protocol("a directory history without a root".into()))?;
        self.accept_root(&root).await?;
        if !answer.proof.is_empty() {
            let values = match verify_history(&root, &me.handle, &answer.proof) {
                Ok(values) => values,
                Err(e) => {
                    self.profile.forget_directory_check(&me.handle)?;
                    return Err(e);
                }
            };
            // Newest first: everything up to the last release must be ours.
            for (epoch, value) in values {
                match value {
                    DirectoryValue::Released => break,
                    DirectoryValue::Account { account_key, .. }
                        if account_key == me.account_key => {}
                    DirectoryValue::Account { .. } => {
                        // Due again on the next receive, until it passes.
                        self.profile.forget_directory_check(&me.handle)?;
                        return Err(kt_error(
                            &me.handle,
                            format!(
                                "the server published an account key for you that you did not create (epoch {epoch})"
                            ),
                        ));
                    }
                }
            }
        }
        // Remembered (under our own handle) so that receive checks again only after
        // `OWN_CHECK_PERIOD`.
        self.profile.record_directory_check(
            &me.handle,
            &me.account_key,
            Some(root.epoch),
            unix_ms(),
        )?;
        let pending = self.profile.pending_directory_checks()?;
        if !pending.is_empty() {
            let accounts = self.fetch_accounts_unverified(&pending).await?;
            self.verify_accounts(&accounts).await?;
        }
        Ok(root.epoch)
    }
}

/// Verifies a complete history proof; the values newest first with their epochs.
fn verify_history(
    root: &wire::DirectoryRoot,
    handle: &str,
    proof: &[u8],
) -> Result<Vec<(u64, DirectoryValue)>, ClientError> {
    let fail = |reason: String| kt_error(handle, format!("history proof: {reason}"));
    let proof = akd_core::proto::specs::types::HistoryProof::parse_from_bytes(proof)
        .map_err(|e| fail(e.to_string()))?;
    let proof = akd_core::HistoryProof::try_from(&proof).map_err(|e| fail(e.to_string()))?;
    let root_hash = akd_core::hash::try_parse_digest(&root.root_hash).map_err(fail)?;
    let results = akd_core::verify::key_history_verify::<Config>(
        &root.vrf_public_key,
        root_hash,
        root.epoch,
        AkdLabel(handle.as_bytes().to_vec()),
        proof,
        HistoryVerificationParams::Default {
            history_params: HistoryParams::Complete,
        },
    )
    .map_err(|e| fail(e.to_string()))?;
    results
        .into_iter()
        .map(|r| {
            DirectoryValue::decode(&r.value.0)
                .map(|v| (r.epoch, v))
                .map_err(|e| fail(e.to_string()))
        })
        .collect()
}
