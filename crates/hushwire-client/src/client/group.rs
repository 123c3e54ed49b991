//! Group chats in the sync engine: claiming the members' key packages for a group
//! operation ([`Action::NeedMembers`](hushwire_e2e::Action)), fetching the GroupInfo for
//! a rejoin ([`Action::NeedGroupInfo`](hushwire_e2e::Action)), and queueing a rejoin for
//! groups that are stuck after the mailbox was drained.

use hushwire_e2e::{Event, GroupDetails, Suite};
use hushwire_proto::wire;
use reqwest::Method;

use super::Client;
use crate::api::unix_ms;
use crate::{ApiRequest, ClientError};

/// `GET /v1/groups/{hex}/info` (sign it).
pub(crate) fn group_info_request(group_id: &[u8]) -> ApiRequest {
    let hex: String = group_id.iter().map(|b| format!("{b:02x}")).collect();
    ApiRequest::new(Method::GET, format!("/v1/groups/{hex}/info"), Vec::new())
}

impl Client {
    /// Queues a new group chat (see [`hushwire_e2e::Profile::create_group`]); returns its
    /// conversation name. [`Client::flush_outbox`] sends it.
    pub fn create_group(
        &mut self,
        title: &str,
        members: &[String],
        suite: Option<Suite>,
    ) -> Result<String, ClientError> {
        Ok(self
            .profile
            .create_group(title, members, suite, unix_ms())?)
    }

    /// A group chat's members, admins and state, from the local store.
    pub fn group_details(&self, conversation: &str) -> Result<GroupDetails, ClientError> {
        Ok(self.profile.group_details(conversation)?)
    }

    /// Claims key packages of every handle and feeds them to the profile. Handles that
    /// do not exist or have no key packages are left out (reported as events).
    pub(super) async fn provide_members(
        &mut self,
        conversation: &str,
        handles: &[String],
        suite: Suite,
    ) -> Result<(), ClientError> {
        // One batched claim per chunk; a chunk's answer stays under the API body limit.
        let chunk = match suite {
            Suite::XWing => 48,
            Suite::Classic => 384,
        };
        let mut claimed: Vec<(String, Vec<wire::ClaimedKeyPackage>)> =
            Vec::with_capacity(handles.len());
        for part in handles.chunks(chunk) {
            let batch = wire::ClaimKeyPackagesBatch {
                handles: part.to_vec(),
                ciphersuite: u32::from(suite.code()),
            };
            let req = self.signed(ApiRequest::claim_key_packages_batch(&batch))?;
            let answer: wire::ClaimedKeyPackagesBatch = self.api.call(req).await?;
            for c in answer.claimed {
                if part.contains(&c.handle) && !c.unknown_account {
                    claimed.push((c.handle, c.key_packages));
                }
            }
        }
        let wanted: Vec<String> = claimed.iter().map(|(h, _)| h.clone()).collect();
        let accounts = self.fetch_accounts(&wanted).await?;
        let own = self.identity()?.handle.clone();
        let skipped = self
            .profile
            .provide_members(&accounts, &claimed, unix_ms())?;
        for (handle, reason) in skipped {
            if handle == own {
                continue;
            }
            tracing::warn!(%handle, %reason, "member left out of a group operation");
            self.events.push_back(Event::GroupOperationFailed {
                conversation: conversation.to_string(),
                reason: format!("{handle} could not be added: {reason}"),
            });
        }
        Ok(())
    }

    /// Fetches several accounts (`POST /v1/accounts`, in chunks); unknown handles are left
    /// out. Every account is checked against the server's key directory
    /// ([`ClientError::KeyTransparency`] names the first it contradicts).
    pub async fn fetch_accounts(
        &self,
        handles: &[String],
    ) -> Result<Vec<wire::AccountInfo>, ClientError> {
        let accounts = self.fetch_accounts_unverified(handles).await?;
        self.verify_accounts(&accounts).await?;
        Ok(accounts)
    }

    /// [`Client::fetch_accounts`] without the directory check.
    pub(crate) async fn fetch_accounts_unverified(
        &self,
        handles: &[String],
    ) -> Result<Vec<wire::AccountInfo>, ClientError> {
        let mut out = Vec::with_capacity(handles.len());
        for part in handles.chunks(256) {
            let body = wire::AccountsRequest {
                handles: part.to_vec(),
            };
            let req = self.signed(ApiRequest::accounts(&body))?;
            let answer: wire::AccountsResponse = self.api.call(req).await?;
            out.extend(
                answer
                    .accounts
                    .into_iter()
                    .filter(|a| part.contains(&a.handle)),
            );
        }
        Ok(out)
    }

    /// Fetches the group's GroupInfo and builds the rejoining External Commit.
    pub(super) async fn provide_group_info(
        &mut self,
        conversation: &str,
        group_id: &[u8],
    ) -> Result<(), ClientError> {
        let req = self.signed(group_info_request(group_id))?;
        let outcome = match self.api.call::<wire::GroupInfoResponse>(req).await {
            Ok(info) => self
                .profile
                .provide_group_info(conversation, &info.group_info, unix_ms())
                .map_err(ClientError::from),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => Ok(()),
            // Retrying may help: keep the rejoin queued.
            Err(e) if e.is_transient() || e.is_network() => Err(e),
            // No GroupInfo (404), not ours to fetch, or it does not open: give up so the
            // items behind it go out.
            Err(e) => {
                let event = self.profile.cancel_rejoin(conversation, &e.to_string())?;
                self.events.push_back(event);
                Ok(())
            }
        }
    }

    /// Queues a rejoin for every group chat that is stuck: messages for a later epoch wait
    /// although the mailbox is drained, so the commit they need will never come (the
    /// local state fell behind or broke). Returns the conversations.
    pub fn rejoin_stuck_groups(&mut self) -> Result<Vec<String>, ClientError> {
        let stuck = self.profile.stuck_groups()?;
        for conversation in &stuck {
            tracing::warn!(%conversation, "group state is behind the server; rejoining");
            self.profile.group_rejoin(conversation, unix_ms())?;
        }
        Ok(stuck)
    }
}
