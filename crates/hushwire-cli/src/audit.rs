//! `hushwire audit --server URL [--pin PIN] [--from N] [--to M] [--state FILE]`: verifies
//! a server's key directory. Every signed root is checked (signature, the same keys
//! throughout), and every step from one epoch to the next by the server's append-only
//! proof, starting from the empty directory (or the epoch before `--from`). With
//! `--state`, what was audited before is remembered (the directory's keys and the last
//! audited root): a later audit refuses a server whose history no longer contains that
//! root — it rewrote history or shows this auditor another view.
//!
//! Exit codes: 0 every proof verified, 5 a proof or a root failed, 3 unreachable.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use hushwire_client::{ApiClient, ApiRequest, Endpoint, Method};
use hushwire_directory::audit::{AuditError, check_root, empty_root, verify_step};
use hushwire_proto::wire;
use serde_json::json;

use crate::output::print_line;

/// Roots fetched per request (the server's limit).
const ROOTS_PAGE: usize = 1000;

/// What `--state` remembers between audits.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct AuditState {
    /// The directory's VRF public key (hex).
    vrf_public_key: String,
    /// The root-signing key (hex).
    signing_key: String,
    /// The last audited epoch and its root hash (hex).
    epoch: u64,
    root_hash: String,
}

pub(crate) struct AuditArgs {
    pub server: String,
    pub pin: Option<String>,
    pub from: Option<u64>,
    pub to: Option<u64>,
    pub state: Option<PathBuf>,
    pub json: bool,
}

fn load_state(path: &Path) -> anyhow::Result<Option<AuditState>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("{} is not an audit state file", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn save_state(path: &Path, state: &AuditState) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

async fn roots(
    api: &ApiClient,
    after: u64,
    limit: usize,
) -> anyhow::Result<Vec<wire::DirectoryRoot>> {
    let req = ApiRequest::new(
        Method::GET,
        format!("/v1/directory/roots?after={after}&limit={limit}"),
        Vec::new(),
    );
    let page: wire::DirectoryRoots = api.call(req).await?;
    Ok(page.roots)
}

/// The root of `epoch` (≥ 1), as the server serves it now.
async fn root_at(api: &ApiClient, epoch: u64) -> anyhow::Result<Option<wire::DirectoryRoot>> {
    Ok(roots(api, epoch - 1, 1)
        .await?
        .into_iter()
        .find(|r| r.epoch == epoch))
}

pub(crate) async fn run(args: AuditArgs) -> anyhow::Result<()> {
    if let (Some(from), Some(to)) = (args.from, args.to)
        && from > to
    {
        return Err(crate::user_error("--from must not be above --to"));
    }
    let endpoint = Endpoint::new(&args.server, args.pin.as_deref())?;
    let api = ApiClient::new(endpoint)?;
    let latest: wire::DirectoryRoot = api
        .call(ApiRequest::new(Method::GET, "/v1/directory", Vec::new()))
        .await?;
    let state = match &args.state {
        Some(path) => load_state(path)?,
        None => None,
    };
    let pinned = state.as_ref().map(|s| {
        (
            hex::decode(&s.vrf_public_key).unwrap_or_default(),
            hex::decode(&s.signing_key).unwrap_or_default(),
        )
    });
    // The remembered root must still be in the server's history, unchanged.
    if let Some(s) = &state
        && s.epoch > 0
    {
        let now = root_at(&api, s.epoch).await?.ok_or(AuditError::Sequence {
            expected: s.epoch,
            got: latest.epoch,
        })?;
        check_root(
            &now,
            pinned.as_ref().map(|(v, k)| (v.as_slice(), k.as_slice())),
        )?;
        if hex::encode(&now.root_hash) != s.root_hash {
            return Err(AuditError::Fork { epoch: s.epoch }.into());
        }
    }
    let to = args.to.unwrap_or(latest.epoch).min(latest.epoch);
    let from = args.from.unwrap_or(1).max(1);
    if from > to {
        let msg = format!(
            "nothing to audit: the directory is at epoch {}",
            latest.epoch
        );
        return if args.json {
            print_line(
                &json!({"epochs": 0, "from": from, "to": to, "latest": latest.epoch}).to_string(),
            )
        } else {
            print_line(&msg)
        };
    }
    // The hash the first step starts from.
    let mut previous = if from == 1 {
        empty_root().await?.to_vec()
    } else {
        let root = root_at(&api, from - 1).await?.ok_or(AuditError::Sequence {
            expected: from - 1,
            got: latest.epoch,
        })?;
        check_root(
            &root,
            pinned.as_ref().map(|(v, k)| (v.as_slice(), k.as_slice())),
        )?;
        root.root_hash.to_vec()
    };
    let mut keys = pinned;
    let mut epoch = from - 1;
    let mut last_root: Option<wire::DirectoryRoot> = None;
    while epoch < to {
        let limit = usize::try_from(to - epoch)
            .unwrap_or(ROOTS_PAGE)
            .min(ROOTS_PAGE);
        let page = roots(&api, epoch, limit).await?;
        if page.is_empty() {
            return Err(AuditError::Sequence {
                expected: epoch + 1,
                got: epoch,
            }
            .into());
        }
        for root in page {
            if root.epoch != epoch + 1 {
                return Err(AuditError::Sequence {
                    expected: epoch + 1,
                    got: root.epoch,
                }
                .into());
            }
            check_root(
                &root,
                keys.as_ref().map(|(v, k)| (v.as_slice(), k.as_slice())),
            )?;
            keys.get_or_insert_with(|| (root.vrf_public_key.to_vec(), root.signing_key.to_vec()));
            let proof: wire::DirectoryAudit = api
                .call(ApiRequest::new(
                    Method::GET,
                    format!("/v1/directory/audit/{}", root.epoch),
                    Vec::new(),
                ))
                .await?;
            verify_step(&previous, &root, &proof).await?;
            if let Some(s) = &state
                && s.epoch == root.epoch
                && hex::encode(&root.root_hash) != s.root_hash
            {
                return Err(AuditError::Fork { epoch: s.epoch }.into());
            }
            previous = root.root_hash.to_vec();
            epoch = root.epoch;
            last_root = Some(root);
            if epoch >= to {
                break;
            }
        }
    }
    let audited = to - from + 1;
    if let (Some(path), Some(root)) = (&args.state, &last_root)
        && state.as_ref().is_none_or(|s| root.epoch >= s.epoch)
    {
        save_state(
            path,
            &AuditState {
                vrf_public_key: hex::encode(&root.vrf_public_key),
                signing_key: hex::encode(&root.signing_key),
                epoch: root.epoch,
                root_hash: hex::encode(&root.root_hash),
            },
        )?;
    }
    if args.json {
        print_line(
            &json!({
                "epochs": audited,
                "from": from,
                "to": to,
                "latest": latest.epoch,
                "root_hash": last_root.as_ref().map(|r| hex::encode(&r.root_hash)),
                "signing_key": last_root.as_ref().map(|r| hex::encode(&r.signing_key)),
            })
            .to_string(),
        )
    } else {
        print_line(&format!(
            "key directory: epochs {from}..={to} verified append-only ({audited} proofs), latest epoch {}",
            latest.epoch
        ))
    }
}
