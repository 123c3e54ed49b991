//! A tiny in-memory Delivery Service and client driver for the tests. It follows the
//! rules of `hushwire_store::Submission`: per-group epoch fencing of commits (read from
//! the plaintext MLS header with `hushwire_proto::mls::parse_header`), idempotency by
//! message id, fan-out to the roster minus the sender, per-device mailbox seqs.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_arguments
)]

use std::collections::HashMap;
use std::path::PathBuf;

use hushwire_e2e::{Action, E2eError, Event, Profile, Suite};
use hushwire_proto::mls::{ContentType, MlsHeader, parse_header};
use hushwire_proto::wire::{
    self, AccountInfo, ClaimedKeyPackage, DeviceAddress, DeviceInfo, Envelope, EnvelopeKind,
    Submit, SubmitResult, submit_result::Outcome,
};

pub type Dev = (String, u32);
/// (handle, device, suite) -> [(bytes, last_resort)]
type KeyPackageStore = HashMap<(String, u32, u16), Vec<(Vec<u8>, bool)>>;

#[derive(Default)]
pub struct Ds {
    pub now: u64,
    groups: HashMap<Vec<u8>, (u64, Vec<Dev>, u64)>,
    mailboxes: HashMap<Dev, Vec<Envelope>>,
    next_seq: HashMap<Dev, u64>,
    results: HashMap<(Dev, Vec<u8>), SubmitResult>,
    pub accounts: HashMap<String, AccountInfo>,
    /// (handle, device, suite) -> [(bytes, last_resort)]
    key_packages: KeyPackageStore,
}

fn dev(a: &DeviceAddress) -> Dev {
    (a.handle.clone(), a.device_id)
}

impl Ds {
    pub fn tick(&mut self) -> u64 {
        self.now += 1;
        self.now
    }

    pub fn register(&mut self, handle: &str, reg: &hushwire_e2e::Registration) -> u32 {
        let account = self
            .accounts
            .entry(handle.to_string())
            .or_insert(AccountInfo {
                handle: handle.to_string(),
                account_key: reg.account_key.to_vec().into(),
                devices: vec![],
                device_list: None,
            });
        if account.account_key.as_ref() != reg.account_key {
            // "Re-registration" with a new account key (identity change).
            account.account_key = reg.account_key.to_vec().into();
            account.devices.clear();
        }
        let id = account
            .devices
            .iter()
            .map(|d| d.device_id)
            .max()
            .unwrap_or(0)
            + 1;
        account.devices.push(DeviceInfo {
            device_id: id,
            certificate: Some(reg.device.clone()),
            revoked: false,
        });
        id
    }

    pub fn upload(&mut self, d: &Dev, suite: Suite, kps: Vec<Vec<u8>>, last_resort: bool) {
        let e = self
            .key_packages
            .entry((d.0.clone(), d.1, suite.code()))
            .or_default();
        for kp in kps {
            e.push((kp, last_resort));
        }
    }

    pub fn claim(&mut self, handle: &str, suite: Suite) -> Vec<ClaimedKeyPackage> {
        let mut out = vec![];
        let devices: Vec<u32> = self
            .accounts
            .get(handle)
            .map(|a| a.devices.iter().map(|d| d.device_id).collect())
            .unwrap_or_default();
        for d in devices {
            if let Some(list) = self
                .key_packages
                .get_mut(&(handle.to_string(), d, suite.code()))
            {
                let pick = list
                    .iter()
                    .position(|(_, lr)| !lr)
                    .or_else(|| list.iter().position(|(_, lr)| *lr));
                if let Some(i) = pick {
                    let (kp, lr) = list[i].clone();
                    if !lr {
                        list.remove(i);
                    }
                    out.push(ClaimedKeyPackage {
                        device_id: d,
                        key_package: kp.into(),
                    });
                }
            }
        }
        out
    }

    fn deliver(
        &mut self,
        to: &Dev,
        message_id: &[u8],
        group_id: &[u8],
        group_seq: u64,
        kind: EnvelopeKind,
        sender: &Dev,
        payload: &[u8],
    ) {
        let seq = self.next_seq.entry(to.clone()).or_insert(0);
        *seq += 1;
        let env = Envelope {
            seq: *seq,
            message_id: message_id.to_vec().into(),
            group_id: group_id.to_vec().into(),
            group_seq,
            kind: kind as i32,
            sender: Some(DeviceAddress {
                handle: sender.0.clone(),
                device_id: sender.1,
            }),
            server_time_ms: self.now,
            payload: payload.to_vec().into(),
        };
        self.mailboxes.entry(to.clone()).or_default().push(env);
    }

    pub fn submit(&mut self, sender: &Dev, s: &Submit) -> SubmitResult {
        let key = (sender.clone(), s.message_id.to_vec());
        if let Some(r) = self.results.get(&key) {
            let mut r = r.clone();
            if let Some(Outcome::Accepted(a)) = &mut r.outcome {
                a.duplicate = true;
            }
            return r;
        }
        assert_eq!(s.message_id.len(), 16, "message ids are 16 bytes");
        let MlsHeader::Framed(h) = parse_header(&s.mls_message).expect("header") else {
            panic!("not a framed message");
        };
        assert_eq!(h.group_id.as_slice(), s.group_id.as_ref());
        let reject = |code: wire::ErrorCode| SubmitResult {
            outcome: Some(Outcome::Rejected(wire::Error {
                code: code as i32,
                message: "no".into(),
            })),
        };
        if !self.groups.contains_key(&h.group_id) {
            if h.content_type == ContentType::Commit && h.epoch == 0 {
                self.groups
                    .insert(h.group_id.clone(), (0, vec![sender.clone()], 0));
            } else {
                return reject(wire::ErrorCode::UnknownGroup);
            }
        }
        let (epoch, roster, gseq) = self.groups.get_mut(&h.group_id).unwrap();
        if !roster.contains(sender) {
            return reject(wire::ErrorCode::NotMember);
        }
        let mut recipients: Vec<Dev> = roster.clone();
        let kind;
        if h.content_type == ContentType::Commit {
            if h.epoch != *epoch {
                return SubmitResult {
                    outcome: Some(Outcome::StaleEpoch(wire::StaleEpoch {
                        current_epoch: *epoch,
                    })),
                };
            }
            *epoch += 1;
            let new_roster: Vec<Dev> = s.roster.iter().map(dev).collect();
            assert!(new_roster.contains(sender), "roster includes the sender");
            for d in &new_roster {
                if !recipients.contains(d) {
                    recipients.push(d.clone());
                }
            }
            *roster = new_roster;
            kind = EnvelopeKind::Commit;
        } else {
            kind = EnvelopeKind::Application;
        }
        *gseq += 1;
        let (group_seq, epoch_after) = (*gseq, *epoch);
        for r in recipients.iter().filter(|r| *r != sender) {
            self.deliver(
                r,
                &s.message_id,
                &s.group_id,
                group_seq,
                kind,
                sender,
                &s.mls_message,
            );
        }
        for w in &s.welcomes {
            for r in &w.recipients {
                self.deliver(
                    &dev(r),
                    &s.message_id,
                    &s.group_id,
                    0,
                    EnvelopeKind::Welcome,
                    sender,
                    &w.welcome,
                );
            }
        }
        let result = SubmitResult {
            outcome: Some(Outcome::Accepted(wire::Accepted {
                group_seq,
                epoch: epoch_after,
                duplicate: false,
            })),
        };
        self.results.insert(key, result.clone());
        result
    }

    /// Puts arbitrary bytes into a mailbox, as a misbehaving sender could.
    pub fn inject(&mut self, to: &Dev, payload: Vec<u8>) -> Envelope {
        let from = ("mallory".to_string(), 1);
        self.deliver(
            to,
            &[7; 16],
            &[7; 16],
            0,
            EnvelopeKind::Welcome,
            &from,
            &payload,
        );
        self.mailboxes[to].last().unwrap().clone()
    }

    pub fn mailbox(&self, d: &Dev) -> Vec<Envelope> {
        self.mailboxes.get(d).cloned().unwrap_or_default()
    }

    /// Takes the newest envelope out of a mailbox (to deliver it out of band).
    pub fn take_last(&mut self, d: &Dev) -> Option<Envelope> {
        self.mailboxes.get_mut(d).and_then(|m| m.pop())
    }
}

pub struct Client {
    pub handle: String,
    pub dir: PathBuf,
    pub profile: Profile,
    pub events: Vec<Event>,
}

impl Client {
    pub fn new(root: &std::path::Path, ds: &mut Ds, handle: &str) -> Client {
        let dir = root.join(handle);
        let mut profile =
            Profile::open(&dir, &hushwire_e2e::StoreKey::from_bytes([7; 32])).unwrap();
        let reg = profile.create_identity(handle, ds.tick()).unwrap();
        let id = ds.register(handle, &reg);
        profile
            .complete_registration("https://test.invalid", None, id)
            .unwrap();
        let mut c = Client {
            handle: handle.into(),
            dir,
            profile,
            events: vec![],
        };
        c.upload(ds, 3);
        c
    }

    pub fn dev(&self) -> Dev {
        let id = self.profile.identity().unwrap();
        (id.handle.clone(), id.device_id)
    }

    pub fn upload(&mut self, ds: &mut Ds, n: usize) {
        let d = self.dev();
        for suite in [Suite::XWing, Suite::Classic] {
            let kps = self.profile.key_packages(suite, n, false).unwrap();
            ds.upload(&d, suite, kps, false);
            let lr = self.profile.key_packages(suite, 1, true).unwrap();
            ds.upload(&d, suite, lr, true);
        }
    }

    pub fn reopen(&mut self) {
        // Drop the old profile first (closes the connection), as after a restart.
        let dir = self.dir.clone();
        let fresh = Profile::open(&dir, &hushwire_e2e::StoreKey::from_bytes([7; 32])).unwrap();
        self.profile = fresh;
    }

    /// Runs the outbox until it needs input from elsewhere. Returns whether anything
    /// was submitted.
    pub fn pump(&mut self, ds: &mut Ds) -> bool {
        let mut progressed = false;
        for _ in 0..100 {
            let now = ds.tick();
            match self.profile.next_action(now).unwrap() {
                Action::Idle | Action::AwaitIncoming => return progressed,
                Action::NeedPeer { handle, suite } => {
                    let account = ds.accounts.get(&handle).cloned().unwrap();
                    let kps = ds.claim(&handle, suite);
                    self.profile.provide_peer(&account, &kps, now).unwrap();
                    progressed = true;
                }
                Action::NeedMembers { handles, suite, .. } => {
                    let accounts: Vec<_> = handles
                        .iter()
                        .filter_map(|h| ds.accounts.get(h).cloned())
                        .collect();
                    let kps: Vec<_> = handles
                        .iter()
                        .map(|h| (h.clone(), ds.claim(h, suite)))
                        .collect();
                    self.profile.provide_members(&accounts, &kps, now).unwrap();
                    progressed = true;
                }
                Action::NeedGroupInfo { .. } => panic!("this harness keeps no GroupInfo"),
                Action::Submit(s) => {
                    let result = ds.submit(&self.dev(), &s);
                    let ev = self
                        .profile
                        .submit_result(&s.message_id, &result, ds.tick())
                        .unwrap();
                    self.events.extend(ev);
                    progressed = true;
                }
            }
        }
        panic!("outbox did not settle");
    }

    /// Receives one envelope, fetching accounts as asked.
    pub fn receive(&mut self, ds: &mut Ds, env: &Envelope) -> Vec<Event> {
        for _ in 0..5 {
            let now = ds.tick();
            match self.profile.receive(env, now) {
                Ok(ev) => {
                    self.events.extend(ev.clone());
                    return ev;
                }
                Err(E2eError::NeedAccount(h)) => {
                    let account = ds.accounts.get(&h).cloned().unwrap();
                    self.profile.learn_account(&account).unwrap();
                }
                Err(e) => panic!("receive failed: {e}"),
            }
        }
        panic!("NeedAccount loop");
    }

    /// Receives everything new in the mailbox. Returns whether anything was new.
    pub fn deliver(&mut self, ds: &mut Ds) -> bool {
        let last = self.profile.last_received_seq().unwrap();
        let new: Vec<Envelope> = ds
            .mailbox(&self.dev())
            .into_iter()
            .filter(|e| e.seq > last)
            .collect();
        for env in &new {
            self.receive(ds, env);
        }
        !new.is_empty()
    }

    pub fn texts(&self, conversation: &str) -> Vec<(String, String)> {
        self.profile
            .history(conversation)
            .unwrap()
            .into_iter()
            .map(|m| (m.from, m.text))
            .collect()
    }
}

/// Pumps and delivers until nothing moves.
pub fn settle(ds: &mut Ds, clients: &mut [&mut Client]) {
    for _ in 0..50 {
        let mut moved = false;
        for c in clients.iter_mut() {
            moved |= c.pump(ds);
        }
        for c in clients.iter_mut() {
            moved |= c.deliver(ds);
        }
        if !moved {
            return;
        }
    }
    panic!("did not settle");
}
