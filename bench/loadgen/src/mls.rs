//! Real client-side MLS for `run --real-mls`: every message is encrypted by its sender
//! and decrypted by its recipient with OpenMLS, in the generator, with the group
//! configuration the Hushwire clients use (`hushwire_e2e::internals`). The server sees
//! the same kind of traffic as from real clients; the generator's core now also pays
//! for the cryptography, as each phone would.
//!
//! Groups are set up in memory before the connections open: the first device of a
//! pair creates the group and adds the second (commit and Welcome, both submitted to
//! the server as the set-up of the other modes is), and the second joins from that
//! Welcome at once. Set-up uses the classic suite (0x0001): the post-quantum suite
//! costs more only in key packages, Welcomes and commits, not in application messages.

use anyhow::{Context, Result, anyhow, bail};
use hushwire_e2e::Suite;
use hushwire_e2e::internals::{group_config_with, leaf_capabilities};
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    BasicCredential, CredentialWithKey, GroupId, KeyPackage, MlsGroup, MlsMessageBodyIn,
    MlsMessageIn, OpenMlsProvider as _, ProcessedMessageContent, StagedWelcome,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;

const SUITE: Suite = Suite::Classic;

/// One device's MLS state in its two-device group.
pub struct MlsMember {
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    group: MlsGroup,
}

impl std::fmt::Debug for MlsMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MlsMember { .. }") // holds key material
    }
}

impl MlsMember {
    /// Encrypts one application message; returns the `MLSMessage` bytes.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let out = self
            .group
            .create_message(&self.provider, &self.signer, plaintext)
            .map_err(|e| anyhow!("MLS encrypt: {e}"))?;
        out.tls_serialize_detached()
            .map_err(|e| anyhow!("MLS encode: {e}"))
    }

    /// Decrypts one delivered application message; returns its plaintext.
    pub fn decrypt(&mut self, mls_message: &[u8]) -> Result<Vec<u8>> {
        let message = MlsMessageIn::tls_deserialize_exact(mls_message)
            .map_err(|e| anyhow!("MLS decode: {e}"))?
            .try_into_protocol_message()
            .map_err(|e| anyhow!("not a group message: {e}"))?;
        let processed = self
            .group
            .process_message(&self.provider, message)
            .map_err(|e| anyhow!("MLS decrypt: {e}"))?;
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => Ok(app.into_bytes()),
            _ => bail!("a delivered message was not an application message"),
        }
    }
}

/// A two-device group, created in memory.
pub struct Pair {
    /// The creator's (first device's) state, with the commit merged.
    pub a: MlsMember,
    /// The second device's state, joined from the Welcome.
    pub b: MlsMember,
    /// The commit that created the group (to submit, epoch 0).
    pub commit: Vec<u8>,
    /// The Welcome for the second device (to submit with the commit).
    pub welcome: Vec<u8>,
}

fn identity(name: &str) -> Result<(OpenMlsRustCrypto, SignatureKeyPair, CredentialWithKey)> {
    let provider = OpenMlsRustCrypto::default();
    let signer = SignatureKeyPair::new(SUITE.ciphersuite().signature_algorithm())
        .map_err(|e| anyhow!("signature key: {e}"))?;
    signer
        .store(provider.storage())
        .map_err(|e| anyhow!("storing the signature key: {e}"))?;
    let credential = CredentialWithKey {
        credential: BasicCredential::new(name.as_bytes().to_vec()).into(),
        signature_key: signer.public().into(),
    };
    Ok((provider, signer, credential))
}

/// Creates the group `group_id` of devices `a_name` and `b_name`.
pub fn pair(group_id: &[u8], a_name: &str, b_name: &str) -> Result<Pair> {
    let config = group_config_with(SUITE, None);
    let (pa, sa, ca) = identity(a_name)?;
    let (pb, sb, cb) = identity(b_name)?;
    let kp: KeyPackage = KeyPackage::builder()
        .leaf_node_capabilities(leaf_capabilities())
        .build(SUITE.ciphersuite(), &pb, &sb, cb)
        .map_err(|e| anyhow!("key package: {e}"))?
        .key_package()
        .clone();
    let mut group =
        MlsGroup::new_with_group_id(&pa, &sa, &config, GroupId::from_slice(group_id), ca)
            .map_err(|e| anyhow!("creating the group: {e}"))?;
    let (commit, welcome, _group_info) = group
        .add_members(&pa, &sa, &[kp])
        .map_err(|e| anyhow!("adding the second device: {e}"))?;
    group
        .merge_pending_commit(&pa)
        .map_err(|e| anyhow!("merging the commit: {e}"))?;
    let commit = commit
        .tls_serialize_detached()
        .map_err(|e| anyhow!("encoding the commit: {e}"))?;
    let welcome = welcome
        .tls_serialize_detached()
        .map_err(|e| anyhow!("encoding the Welcome: {e}"))?;
    let MlsMessageBodyIn::Welcome(w) = MlsMessageIn::tls_deserialize_exact(welcome.as_slice())
        .map_err(|e| anyhow!("decoding the Welcome: {e}"))?
        .extract()
    else {
        bail!("the Welcome did not decode as a Welcome");
    };
    let joined = StagedWelcome::new_from_welcome(&pb, config.join_config(), w, None)
        .map_err(|e| anyhow!("staging the Welcome: {e}"))?
        .into_group(&pb)
        .context("joining from the Welcome")?;
    Ok(Pair {
        a: MlsMember {
            provider: pa,
            signer: sa,
            group,
        },
        b: MlsMember {
            provider: pb,
            signer: sb,
            group: joined,
        },
        commit,
        welcome,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn both_devices_read_each_others_messages_and_the_header_is_the_groups() {
        let gid = b"loadgen-test-group".to_vec();
        let mut p = pair(&gid, "a/1", "b/1").unwrap();
        use hushwire_proto::mls::{ContentType, FramedHeader, MlsHeader, WireFormat, parse_header};
        assert_eq!(
            parse_header(&p.commit).unwrap(),
            MlsHeader::Framed(FramedHeader {
                wire_format: WireFormat::PrivateMessage,
                group_id: gid.clone(),
                epoch: 0,
                content_type: ContentType::Commit,
            })
        );
        let first = p.a.encrypt(b"hello").unwrap();
        let MlsHeader::Framed(h) = parse_header(&first).unwrap() else {
            panic!("not framed")
        };
        assert_eq!((h.epoch, h.content_type), (1, ContentType::Application));
        assert_eq!(p.b.decrypt(&first).unwrap(), b"hello");
        for i in 0..3u8 {
            let m = p.a.encrypt(&[i; 40]).unwrap();
            assert_eq!(p.b.decrypt(&m).unwrap(), vec![i; 40]);
            let m = p.b.encrypt(&[i + 10; 40]).unwrap();
            assert_eq!(p.a.decrypt(&m).unwrap(), vec![i + 10; 40]);
        }
        let m = p.a.encrypt(b"once").unwrap();
        assert!(p.b.decrypt(&m).is_ok());
        assert!(
            p.b.decrypt(&m).is_err(),
            "a replayed message must not decrypt twice"
        );
    }
}
