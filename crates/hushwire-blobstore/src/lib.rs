//! The bytes of Hushwire's media blobs: a narrow trait, [`BlobStore`], and its
//! implementation over [`object_store`], [`ObjectBlobStore`]: the local filesystem under
//! the server's data directory ([`ObjectBlobStore::local`]) or an S3 bucket
//! ([`ObjectBlobStore::s3`], settings in [`s3`]).
//!
//! The server sees only ciphertext: a blob is the opaque bytes a client uploaded, in
//! fixed-size parts. Each part is a separate object, `blobs/{64 hex id}/{index}`, written
//! once and never changed, so an object store needs no multipart state and an upload can
//! be resumed part by part. Which parts exist, who may read them and when they go is the
//! metadata store's business (`hushwire_store::Blobs`); this crate only moves bytes.
//!
//! Guarantees:
//! - [`BlobStore::put_part`] is atomic and write-once: the bytes go to a temporary object
//!   that is published (linked into place) only when complete, and with the local
//!   filesystem the file and its directory are fsynced first, so a crash never leaves a
//!   part that looks complete but is not. If the part exists, nothing is written and
//!   [`PutOutcome::Exists`] says so (first writer wins, also between processes).
//! - Reads are streams of chunks of at most [`READ_CHUNK`] bytes, so memory stays bounded
//!   whatever the blob's size; [`read_blob`] chains a blob's parts lazily, from any
//!   offset (HTTP Range resumption).
//! - A full disk is reported as [`BlobStoreError::StorageFull`], distinct from other I/O
//!   failures.
//! - With S3, write-once is S3's conditional write (`If-None-Match: *`), and credentials
//!   are never logged (see [`s3`]).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
#[cfg(any(test, feature = "moto"))]
pub mod moto;
pub mod s3;

pub use s3::{S3Credentials, S3Location, S3Settings};

use object_store::{
    GetOptions, GetRange, GetResultPayload, ObjectStore, PutMode, PutOptions, PutPayload,
};

/// Length of a blob id.
pub const BLOB_ID_LEN: usize = 32;

/// Largest chunk a read stream yields.
pub const READ_CHUNK: usize = 64 * 1024;

/// The key prefix of every blob object.
pub const BLOBS_PREFIX: &str = "blobs";

/// A stream of a blob's bytes.
pub type ByteStream = BoxStream<'static, Result<Bytes, BlobStoreError>>;

/// Why a blob store operation failed. Messages are for logs (they may name paths),
/// never for clients.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobStoreError {
    /// The storage has no room left (disk full or a filesystem quota).
    #[error("blob storage is full: {0}")]
    StorageFull(String),
    /// The part does not exist.
    #[error("blob part not found")]
    NotFound,
    /// Stored bytes are not what their layout says (a part of the wrong length).
    #[error("blob store holds inconsistent data: {0}")]
    Corrupt(String),
    /// Any other failure of the storage.
    #[error("blob store failed: {0}")]
    Io(String),
    /// The store cannot be set up as configured (a bad `s3://` URL, an unreadable
    /// credentials file, plain HTTP not allowed). Never quotes a credential.
    #[error("blob store configuration: {0}")]
    Config(String),
}

/// Result of [`BlobStore::put_part`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Written now.
    Created,
    /// The part existed already; nothing was written. Its bytes may differ: compare.
    Exists,
}

/// A stored part, as listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredPart {
    /// The blob's id.
    pub blob: [u8; BLOB_ID_LEN],
    /// The part's index.
    pub index: u32,
    /// Its length in bytes.
    pub size: u64,
    /// When it was written (Unix milliseconds).
    pub last_modified_ms: u64,
}

/// Where blob bytes live. Parts are write-once objects (see the crate doc).
#[async_trait]
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// Stores part `index` of `blob` atomically, unless it exists.
    async fn put_part(
        &self,
        blob: &[u8; BLOB_ID_LEN],
        index: u32,
        bytes: Bytes,
    ) -> Result<PutOutcome, BlobStoreError>;

    /// Streams part `index` of `blob` from byte `offset` (less than its length) to its
    /// end.
    async fn read_part(
        &self,
        blob: &[u8; BLOB_ID_LEN],
        index: u32,
        offset: u64,
    ) -> Result<ByteStream, BlobStoreError>;

    /// Deletes one part (no error if it does not exist).
    async fn delete_part(&self, blob: &[u8; BLOB_ID_LEN], index: u32)
    -> Result<(), BlobStoreError>;

    /// Deletes every part of `blob` (no error if there is none).
    async fn delete_blob(&self, blob: &[u8; BLOB_ID_LEN]) -> Result<(), BlobStoreError>;

    /// Every stored part, in no particular order (for finding parts whose blob record
    /// is gone). Objects that do not follow the layout are skipped.
    fn list_parts(&self) -> BoxStream<'static, Result<StoredPart, BlobStoreError>>;
}

/// Streams `size` bytes of a blob cut into `part_size`-byte parts, from byte `start`:
/// parts are opened one after the other, as the previous one ends. A part shorter or
/// longer than the layout says ends the stream with [`BlobStoreError::Corrupt`].
pub fn read_blob(
    store: Arc<dyn BlobStore>,
    blob: [u8; BLOB_ID_LEN],
    size: u64,
    part_size: u32,
    start: u64,
) -> ByteStream {
    struct State {
        store: Arc<dyn BlobStore>,
        blob: [u8; BLOB_ID_LEN],
        size: u64,
        part_size: u64,
        pos: u64,
        /// The open part and the offset at which it ends.
        current: Option<(ByteStream, u64)>,
    }
    let state = State {
        store,
        blob,
        size,
        part_size: u64::from(part_size),
        pos: start,
        current: None,
    };
    futures_util::stream::try_unfold(state, |mut st| async move {
        loop {
            if let Some((part, end)) = st.current.as_mut() {
                let end = *end;
                match part.next().await {
                    Some(Ok(chunk)) => {
                        let len = chunk.len() as u64;
                        if st.pos.saturating_add(len) > end {
                            return Err(BlobStoreError::Corrupt(format!(
                                "a part of blob {} is longer than its layout",
                                hex(&st.blob)
                            )));
                        }
                        st.pos += len;
                        return Ok(Some((chunk, st)));
                    }
                    Some(Err(e)) => return Err(e),
                    None if st.pos == end => st.current = None,
                    None => {
                        return Err(BlobStoreError::Corrupt(format!(
                            "a part of blob {} is shorter than its layout",
                            hex(&st.blob)
                        )));
                    }
                }
            }
            if st.pos >= st.size || st.part_size == 0 {
                return Ok(None);
            }
            let index = st.pos / st.part_size;
            let offset = st.pos % st.part_size;
            let end = index
                .saturating_add(1)
                .saturating_mul(st.part_size)
                .min(st.size);
            let index = u32::try_from(index)
                .map_err(|_| BlobStoreError::Corrupt("part index beyond 32 bits".into()))?;
            let part = st.store.read_part(&st.blob, index, offset).await?;
            st.current = Some((part, end));
        }
    })
    .boxed()
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    s
}

fn unhex(s: &str) -> Option<[u8; BLOB_ID_LEN]> {
    let bytes = s.as_bytes();
    if bytes.len() != 2 * BLOB_ID_LEN {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; BLOB_ID_LEN];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// The I/O error kind somewhere in `err`'s source chain.
fn io_kind(err: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = e.source();
    }
    None
}

/// Maps an object store failure: not found, storage full, or other.
fn classify(err: object_store::Error) -> BlobStoreError {
    match err {
        object_store::Error::NotFound { .. } => BlobStoreError::NotFound,
        other => match io_kind(&other) {
            Some(std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded) => {
                BlobStoreError::StorageFull(other.to_string())
            }
            Some(std::io::ErrorKind::NotFound) => BlobStoreError::NotFound,
            _ => BlobStoreError::Io(other.to_string()),
        },
    }
}

fn classify_io(err: std::io::Error) -> BlobStoreError {
    match err.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            BlobStoreError::StorageFull(err.to_string())
        }
        std::io::ErrorKind::NotFound => BlobStoreError::NotFound,
        _ => BlobStoreError::Io(err.to_string()),
    }
}

/// [`BlobStore`] over an [`ObjectStore`]: parts are objects `{prefix}/{hex id}/{index}`.
pub struct ObjectBlobStore {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// With the local filesystem: the directory holding `{prefix}`, so deleting a blob
    /// also removes what a crash mid-write left behind (staging files).
    local_root: Option<PathBuf>,
}

impl fmt::Debug for ObjectBlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectBlobStore")
            .field("store", &self.store.to_string())
            .field("prefix", &self.prefix.as_ref())
            .finish()
    }
}

impl ObjectBlobStore {
    /// Blobs in `{dir}/blobs/` on the local filesystem (the directory is created). Writes
    /// are fsynced (file and directory) before they are reported done.
    pub fn local(dir: &Path) -> Result<Self, BlobStoreError> {
        std::fs::create_dir_all(dir.join(BLOBS_PREFIX)).map_err(classify_io)?;
        let root = std::fs::canonicalize(dir).map_err(classify_io)?;
        let fs = LocalFileSystem::new_with_prefix(&root)
            .map_err(classify)?
            .with_fsync(true)
            .with_automatic_cleanup(true);
        Ok(Self {
            store: Arc::new(fs),
            prefix: ObjectPath::from(BLOBS_PREFIX),
            local_root: Some(root),
        })
    }

    /// Blobs in the S3 bucket of `url` (`s3://BUCKET[/prefix]`), as objects
    /// `{prefix}/blobs/{hex id}/{index}`, reached with `settings` (see
    /// [`S3Settings::from_env`]). Builds the client only: a wrong bucket or credentials
    /// show at the first request. Parts are written with `If-None-Match: *`, which S3
    /// (and compatible stores that support conditional writes) honour.
    pub fn s3(url: &str, settings: &S3Settings) -> Result<Self, BlobStoreError> {
        let location = S3Location::parse(url)?;
        let store = s3::build(&location, settings)?;
        Ok(Self::new(Arc::new(store), &location.blobs_prefix()))
    }

    /// Blobs in any object store, under `prefix` (e.g. `blobs`). The store must support
    /// [`PutMode::Create`] (S3 does, with conditional writes).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        Self {
            store,
            prefix: ObjectPath::from(prefix),
            local_root: None,
        }
    }

    fn blob_path(&self, blob: &[u8; BLOB_ID_LEN]) -> ObjectPath {
        self.prefix.clone().join(hex(blob))
    }

    fn part_path(&self, blob: &[u8; BLOB_ID_LEN], index: u32) -> ObjectPath {
        self.blob_path(blob).join(index.to_string())
    }

    fn parse(&self, location: &ObjectPath) -> Option<([u8; BLOB_ID_LEN], u32)> {
        let mut parts = location.prefix_match(&self.prefix)?;
        let blob = unhex(parts.next()?.as_ref())?;
        let index = parts.next()?.as_ref().parse::<u32>().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some((blob, index))
    }
}

/// Reads `range` of `file` in chunks of at most [`READ_CHUNK`] bytes, each on the
/// blocking pool.
fn file_stream(file: std::fs::File, range: Range<u64>) -> ByteStream {
    use std::io::{Read, Seek, SeekFrom};
    let state = (Some(file), range.start, range.end, false);
    futures_util::stream::try_unfold(state, |(file, pos, end, seeked)| async move {
        if pos >= end {
            return Ok(None);
        }
        let Some(mut file) = file else {
            return Ok(None);
        };
        let want = usize::try_from((end - pos).min(READ_CHUNK as u64)).unwrap_or(READ_CHUNK);
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            if !seeked {
                file.seek(SeekFrom::Start(pos))?;
            }
            let mut buf = vec![0u8; want];
            let mut filled = 0;
            while filled < want {
                match file.read(&mut buf[filled..])? {
                    0 => break,
                    n => filled += n,
                }
            }
            buf.truncate(filled);
            Ok((file, buf))
        })
        .await
        .map_err(|e| BlobStoreError::Io(format!("read task failed: {e}")))?;
        let (file, buf) = read.map_err(classify_io)?;
        if buf.is_empty() {
            return Err(BlobStoreError::Corrupt(
                "a part ended before its recorded length".into(),
            ));
        }
        let next = pos + buf.len() as u64;
        Ok(Some((Bytes::from(buf), (Some(file), next, end, true))))
    })
    .boxed()
}

/// Cuts `chunk` into pieces of at most [`READ_CHUNK`] bytes (no copy).
fn split_chunk(mut chunk: Bytes) -> impl Iterator<Item = Bytes> {
    std::iter::from_fn(move || {
        if chunk.is_empty() {
            return None;
        }
        let n = chunk.len().min(READ_CHUNK);
        Some(chunk.split_to(n))
    })
}

#[async_trait]
impl BlobStore for ObjectBlobStore {
    async fn put_part(
        &self,
        blob: &[u8; BLOB_ID_LEN],
        index: u32,
        bytes: Bytes,
    ) -> Result<PutOutcome, BlobStoreError> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&self.part_path(blob, index), PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(PutOutcome::Created),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(PutOutcome::Exists),
            Err(e) => Err(classify(e)),
        }
    }

    async fn read_part(
        &self,
        blob: &[u8; BLOB_ID_LEN],
        index: u32,
        offset: u64,
    ) -> Result<ByteStream, BlobStoreError> {
        let opts = GetOptions {
            range: (offset > 0).then_some(GetRange::Offset(offset)),
            ..GetOptions::default()
        };
        let got = self
            .store
            .get_opts(&self.part_path(blob, index), opts)
            .await
            .map_err(classify)?;
        let range = got.range.clone();
        Ok(match got.payload {
            // Larger chunks than object_store's own 8 KiB file stream: fewer trips to
            // the blocking pool per byte.
            GetResultPayload::File(file, _) => file_stream(file, range),
            GetResultPayload::Stream(s) => s
                .map_err(classify)
                .map_ok(|chunk| futures_util::stream::iter(split_chunk(chunk).map(Ok)))
                .try_flatten()
                .boxed(),
        })
    }

    async fn delete_part(
        &self,
        blob: &[u8; BLOB_ID_LEN],
        index: u32,
    ) -> Result<(), BlobStoreError> {
        let path = self.part_path(blob, index);
        let one = futures_util::stream::once(async move { Ok(path) }).boxed();
        let mut deleted = self.store.delete_stream(one);
        while let Some(r) = deleted.next().await {
            match r.map_err(classify) {
                Ok(_) | Err(BlobStoreError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn delete_blob(&self, blob: &[u8; BLOB_ID_LEN]) -> Result<(), BlobStoreError> {
        let dir = self.blob_path(blob);
        let listed = self
            .store
            .list(Some(&dir))
            .map_ok(|meta| meta.location)
            .boxed();
        let mut deleted = self.store.delete_stream(listed);
        while let Some(r) = deleted.next().await {
            match r.map_err(classify) {
                Ok(_) | Err(BlobStoreError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(root) = &self.local_root {
            let path = root.join(BLOBS_PREFIX).join(hex(blob));
            match tokio::fs::remove_dir_all(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(classify_io(e)),
            }
        }
        Ok(())
    }

    fn list_parts(&self) -> BoxStream<'static, Result<StoredPart, BlobStoreError>> {
        let this = Self {
            store: Arc::clone(&self.store),
            prefix: self.prefix.clone(),
            local_root: None,
        };
        self.store
            .list(Some(&self.prefix))
            .map_err(classify)
            .try_filter_map(move |meta| {
                let parsed = this.parse(&meta.location).map(|(blob, index)| StoredPart {
                    blob,
                    index,
                    size: meta.size,
                    last_modified_ms: u64::try_from(meta.last_modified.timestamp_millis())
                        .unwrap_or(0),
                });
                if parsed.is_none() {
                    tracing::debug!(location = %meta.location, "skipping an object outside the blob layout");
                }
                futures_util::future::ready(Ok(parsed))
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use object_store::ObjectStoreExt as _;

    fn id(n: u8) -> [u8; BLOB_ID_LEN] {
        [n; BLOB_ID_LEN]
    }

    async fn collect(s: ByteStream) -> Result<Vec<u8>, BlobStoreError> {
        let chunks: Vec<Bytes> = s.try_collect().await?;
        Ok(chunks.concat())
    }

    fn pattern(len: usize, seed: u8) -> Bytes {
        Bytes::from(
            (0..len)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                .collect::<Vec<_>>(),
        )
    }

    /// A blob store under test, with a way to look behind the layout.
    struct Backend {
        store: ObjectBlobStore,
        /// The same objects, addressed directly (to read raw bytes, plant strays).
        raw: Arc<dyn ObjectStore>,
        /// With the local filesystem: the data directory (checks of staging files).
        local: Option<tempfile::TempDir>,
        /// With S3: the server, killed when the test ends.
        _moto: Option<moto::MotoServer>,
    }

    impl Backend {
        fn local() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store = ObjectBlobStore::local(dir.path()).unwrap();
            Self {
                raw: Arc::clone(&store.store),
                store,
                local: Some(dir),
                _moto: None,
            }
        }

        /// S3 on a fresh moto server and bucket, under a key prefix; `None` when moto is
        /// not installed outside CI (a "skipped" line was printed).
        fn s3() -> Option<Self> {
            let moto = moto::MotoServer::start().unwrap()?;
            let bucket = moto.create_bucket().unwrap();
            let url = format!("s3://{bucket}/tenant/media");
            let store = ObjectBlobStore::s3(&url, &moto.settings()).unwrap();
            assert_eq!(store.prefix.as_ref(), "tenant/media/blobs");
            Some(Self {
                raw: Arc::clone(&store.store),
                store,
                local: None,
                _moto: Some(moto),
            })
        }

        async fn raw_bytes(&self, path: &ObjectPath) -> Vec<u8> {
            self.raw
                .get(path)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .to_vec()
        }

        async fn raw_names(&self, under: &ObjectPath) -> Vec<String> {
            let mut names: Vec<String> = self
                .raw
                .list(Some(under))
                .map_ok(|m| m.location.to_string())
                .try_collect()
                .await
                .unwrap();
            names.sort_unstable();
            names
        }
    }

    /// Runs each suite function against both backends: `local_fs::NAME` and `s3::NAME`.
    macro_rules! on_both_backends {
        ($($name:ident),* $(,)?) => {
            mod local_fs {
                $(
                    #[tokio::test]
                    async fn $name() {
                        super::$name(super::Backend::local()).await;
                    }
                )*
            }
            mod s3 {
                $(
                    #[tokio::test]
                    async fn $name() {
                        let Some(backend) = super::Backend::s3() else { return };
                        super::$name(backend).await;
                    }
                )*
            }
        };
    }

    on_both_backends!(
        parts_are_write_once_and_read_back_from_any_offset,
        read_blob_chains_parts_and_detects_bad_layout,
        delete_and_list,
    );

    async fn parts_are_write_once_and_read_back_from_any_offset(b: Backend) {
        let store = &b.store;
        let data = pattern(200_000, 7);
        assert_eq!(
            store.put_part(&id(1), 0, data.clone()).await.unwrap(),
            PutOutcome::Created
        );
        // The object is where the layout says, with exactly the bytes.
        let path = store.part_path(&id(1), 0);
        assert_eq!(
            path.to_string(),
            format!("{}/{}/0", store.prefix.as_ref(), hex(&id(1)))
        );
        assert_eq!(b.raw_bytes(&path).await, data.as_ref());
        // Write-once: a second put changes nothing.
        let other = pattern(200_000, 9);
        assert_eq!(
            store.put_part(&id(1), 0, other).await.unwrap(),
            PutOutcome::Exists
        );
        assert_eq!(b.raw_bytes(&path).await, data.as_ref());
        // Reads stream in bounded chunks, from the start or an offset.
        let mut s = store.read_part(&id(1), 0, 0).await.unwrap();
        let mut all = Vec::new();
        while let Some(c) = s.next().await {
            let c = c.unwrap();
            assert!(c.len() <= READ_CHUNK);
            all.extend_from_slice(&c);
        }
        assert_eq!(all, data.as_ref());
        let tail = collect(store.read_part(&id(1), 0, 150_001).await.unwrap())
            .await
            .unwrap();
        assert_eq!(tail, &data[150_001..]);
        assert!(matches!(
            store.read_part(&id(1), 1, 0).await,
            Err(BlobStoreError::NotFound)
        ));
        // Nothing but the part is stored for the blob.
        assert_eq!(
            b.raw_names(&store.blob_path(&id(1))).await,
            [path.to_string()]
        );
        if let Some(dir) = &b.local {
            // No staging file is left next to the part.
            let file = dir.path().join("blobs").join(hex(&id(1))).join("0");
            let names: Vec<_> = std::fs::read_dir(file.parent().unwrap())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert_eq!(names, ["0"]);
        }
    }

    async fn read_blob_chains_parts_and_detects_bad_layout(b: Backend) {
        let store: Arc<dyn BlobStore> = Arc::new(b.store);
        let blob = id(2);
        let data = pattern(10_000, 3);
        let part = 4096usize;
        for (i, chunk) in data.chunks(part).enumerate() {
            store
                .put_part(&blob, i as u32, Bytes::copy_from_slice(chunk))
                .await
                .unwrap();
        }
        for start in [0u64, 1, 4095, 4096, 4097, 9_999, 10_000] {
            let got = collect(read_blob(store.clone(), blob, 10_000, part as u32, start))
                .await
                .unwrap();
            assert_eq!(got, &data[start as usize..], "from {start}");
        }
        // The layout says parts are larger than they are: an error, not a wrong stream.
        let err = collect(read_blob(store.clone(), blob, 10_000, 5000, 0))
            .await
            .unwrap_err();
        assert!(matches!(err, BlobStoreError::Corrupt(_)), "{err:?}");
        // A missing part is NotFound.
        let err = collect(read_blob(store.clone(), id(3), 10, 4, 0))
            .await
            .unwrap_err();
        assert!(matches!(err, BlobStoreError::NotFound), "{err:?}");
    }

    async fn delete_and_list(b: Backend) {
        let store = &b.store;
        for blob in [4u8, 5] {
            for i in 0..3 {
                store
                    .put_part(&id(blob), i, pattern(10, blob))
                    .await
                    .unwrap();
            }
        }
        if let Some(dir) = &b.local {
            // Leftovers of a crash mid-write (a staging file) go with the blob too.
            let blob_dir = dir.path().join("blobs").join(hex(&id(4)));
            std::fs::write(blob_dir.join("3#1"), b"half").unwrap();
        }
        // Objects outside the layout are not listed.
        let stray = store.prefix.clone().join("stray");
        b.raw
            .put(&stray, PutPayload::from_static(b"x"))
            .await
            .unwrap();
        let mut listed: Vec<(u8, u32, u64)> = store
            .list_parts()
            .map_ok(|p| (p.blob[0], p.index, p.size))
            .try_collect()
            .await
            .unwrap();
        listed.sort_unstable();
        assert_eq!(
            listed,
            [
                (4, 0, 10),
                (4, 1, 10),
                (4, 2, 10),
                (5, 0, 10),
                (5, 1, 10),
                (5, 2, 10)
            ]
        );
        store.delete_blob(&id(4)).await.unwrap();
        assert!(b.raw_names(&store.blob_path(&id(4))).await.is_empty());
        if let Some(dir) = &b.local {
            assert!(!dir.path().join("blobs").join(hex(&id(4))).exists());
        }
        store.delete_blob(&id(4)).await.unwrap();
        store.delete_part(&id(5), 1).await.unwrap();
        store.delete_part(&id(5), 1).await.unwrap();
        let mut listed: Vec<(u8, u32)> = store
            .list_parts()
            .map_ok(|p| (p.blob[0], p.index))
            .try_collect()
            .await
            .unwrap();
        listed.sort_unstable();
        assert_eq!(listed, [(5, 0), (5, 2)]);
        // The rest of the store is untouched.
        b.raw.head(&stray).await.unwrap();
    }

    #[test]
    fn split_chunk_bounds_pieces_without_losing_bytes() {
        let data = pattern(3 * READ_CHUNK + 5, 1);
        let pieces: Vec<Bytes> = split_chunk(data.clone()).collect();
        assert_eq!(
            pieces.iter().map(Bytes::len).collect::<Vec<_>>(),
            [READ_CHUNK, READ_CHUNK, READ_CHUNK, 5]
        );
        assert_eq!(pieces.concat(), data.as_ref());
        assert_eq!(split_chunk(Bytes::new()).count(), 0);
    }

    #[test]
    fn a_full_disk_is_told_apart_from_other_failures() {
        let full = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(std::io::Error::from(std::io::ErrorKind::StorageFull)),
        };
        assert!(matches!(classify(full), BlobStoreError::StorageFull(_)));
        let quota = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(std::io::Error::from(std::io::ErrorKind::QuotaExceeded)),
        };
        assert!(matches!(classify(quota), BlobStoreError::StorageFull(_)));
        let other = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(std::io::Error::from(std::io::ErrorKind::PermissionDenied)),
        };
        assert!(matches!(classify(other), BlobStoreError::Io(_)));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_real_full_device_is_storage_full() {
        // /dev/full fails every write with ENOSPC; a blob store rooted where its part
        // file is /dev/full is not possible, so check the I/O mapping on the real errno.
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let err = f
            .write_all(&[0u8; 4096])
            .and_then(|()| f.flush())
            .unwrap_err();
        assert!(matches!(classify_io(err), BlobStoreError::StorageFull(_)));
    }
}
