//! Attachments in the sync engine: sending a file and receiving one.
//!
//! **Sending** ([`Client::send_file`]): the file is measured, its MIME type sniffed and
//! (for images) a preview made; a fresh key and nonce prefix are drawn and the upload is
//! recorded in the profile (`hushwire_e2e::Profile::create_upload`) before any byte
//! leaves. The blob is created for the conversation's MLS group (a group chat's
//! attachment is uploaded once), then the file is encrypted part by part straight from
//! disk and each part PUT while the next one is being sealed. After every confirmed part
//! the profile records how far it got; an interrupted upload (network, a killed
//! process) resumes by asking the server which parts are missing and sealing the file
//! again from the start — STREAM is deterministic for a key and nonce, so no ciphertext
//! is ever stored locally — skipping the parts the server has and checking that the
//! file did not change. Once the blob is complete the upload becomes a queued message
//! in one transaction; [`Client::flush_outbox`] sends it like a text.
//!
//! **Receiving** ([`Client::download_attachment`], or automatically with
//! [`Client::set_auto_download`]): the ciphertext streams in; one worker thread hashes it
//! while another checks each chunk's tag, decrypts it and appends the plaintext to
//! `{media_dir}/.partial/{blob id}.part` (locked: one download of a blob at a time),
//! fsyncing it in the background as it grows. That file holds only authenticated
//! plaintext of whole chunks, and it is the resume state: a download that stopped (a
//! dropped connection, a killed process) seals those chunks again — STREAM is
//! deterministic — which gives back the ciphertext offset to continue from with
//! `Range: bytes=N-` and the hash of the ciphertext before it, so the whole ciphertext's
//! SHA-256 is still checked. (Keeping the plaintext rather than a copy of the ciphertext
//! halves what a download writes to disk.) Only when the ciphertext's SHA-256, every
//! chunk's tag, the plaintext's size and SHA-256 all match the message does the file get
//! its sanitized name in the destination directory, by hard link, never over an existing
//! file (`name (2).ext`, ...; across file systems through a hidden temporary copy). A
//! failed check deletes it: nothing that looks complete is left. If a resumed download
//! fails its check, it is downloaded once more from scratch before being declared bad
//! (what a crash left in `.part` may be what failed).
//!
//! Memory stays bounded whatever the size: two upload parts (at most
//! `limits::MAX_BLOB_PART_BYTES` each) on the sending side; a few 256 KiB batches of the
//! network and one chunk per thread on the receiving side.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use hushwire_e2e::{AttachmentRecord, E2eError, Event, NewUpload, PendingUpload, StoredMessage};
use hushwire_media::{
    self as media, CHUNK_SIZE, DecodeLimits, Expected, FileKey, MediaError, NoncePrefix, Opener,
    SealingReader,
};
use hushwire_proto::limits::{MAX_ATTACHMENT_BYTES, MAX_BLOB_PART_BYTES};
use hushwire_proto::wire::{self, ErrorCode};
use sha2::Digest as _;
use tokio::sync::mpsc;

use super::Client;
use crate::api::unix_ms;
use crate::{ApiRequest, ClientError};

/// Which way a transfer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Encrypting and uploading a file.
    Upload,
    /// Downloading, verifying and decrypting an attachment.
    Download,
}

/// Progress of one transfer, reported to the callback set with
/// [`Client::set_progress`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Upload or download.
    pub direction: Direction,
    /// The upload's id (= the message id it is sent under) or the received message's id.
    pub id: String,
    /// The file's name (the sender's, for downloads: show it sanitized).
    pub name: String,
    /// Ciphertext bytes moved so far (including what an earlier attempt moved).
    pub done: u64,
    /// Ciphertext bytes in total.
    pub total: u64,
    /// The transfer is over (successfully or not).
    pub finished: bool,
}

/// The progress callback.
pub type ProgressFn = Box<dyn FnMut(&Transfer) + Send>;

/// What to send along with a file ([`Client::send_file`]).
#[derive(Debug, Clone, Default)]
pub struct SendFileOptions {
    /// Text shown with the file.
    pub caption: String,
    /// Flag it as a voice note.
    pub voice: bool,
    /// The name receivers see (default: the file's own name, without its directory).
    pub file_name: Option<String>,
    /// View once: receivers do not download it automatically; they open it once
    /// ([`Client::open_view_once`]) and then it is gone from their devices.
    pub view_once: bool,
}

/// The client's attachment settings.
#[derive(Default)]
pub(crate) struct MediaState {
    /// `{profile}/media`: `.partial/` downloads and the default download directory.
    pub(crate) media_dir: Option<PathBuf>,
    /// Where received attachments are saved as they arrive (`None`: not downloaded).
    pub(crate) auto_download: Option<PathBuf>,
    pub(crate) progress: Option<ProgressFn>,
    pub(crate) decode_limits: DecodeLimits,
    /// Received files are not fsynced before they get their name (see
    /// [`Client::set_durable_downloads`]).
    pub(crate) volatile_downloads: bool,
    /// Attachments already tried in this session (so a failing one is not retried in a
    /// loop; the next session retries it).
    pub(crate) tried: HashSet<(String, String)>,
}

/// Waiting this long for the next bytes of a download ends the attempt (it resumes).
const DOWNLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Slowest link a part upload is given time for (plus the fixed allowance).
const MIN_UPLOAD_BYTES_PER_SEC: u64 = 64 * 1024;
/// Buffers of the upload reader and the download worker's writers.
const IO_BUFFER: usize = 256 * 1024;
/// Network chunks queued between the connection and the download worker (and between
/// the worker and its opener thread).
const DOWNLOAD_QUEUE: usize = 8;
/// Bytes of the network handed to the download worker at once.
const DOWNLOAD_BATCH: usize = 256 * 1024;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn local_io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClientError {
    let context = context.into();
    move |source| ClientError::LocalIo { context, source }
}

fn file_error(path: &Path, reason: impl Into<String>) -> ClientError {
    ClientError::File {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn join_error(e: tokio::task::JoinError) -> ClientError {
    ClientError::Protocol(format!("a worker task failed: {e}"))
}

/// What the sender's device learns about a file before uploading it.
struct Prepared {
    len: u64,
    file_name: String,
    mime: String,
    preview: Option<media::Preview>,
    dimensions: (u32, u32),
}

/// Measures the file, sniffs its type and makes the preview (blocking work).
fn prepare(path: &Path, limits: DecodeLimits) -> Result<Prepared, ClientError> {
    let meta = std::fs::metadata(path).map_err(|e| file_error(path, e.to_string()))?;
    if !meta.is_file() {
        return Err(file_error(path, "not a regular file"));
    }
    let len = meta.len();
    if len > MAX_ATTACHMENT_BYTES {
        return Err(file_error(
            path,
            format!("{len} bytes; attachments are limited to {MAX_ATTACHMENT_BYTES} bytes"),
        ));
    }
    let mut file = File::open(path).map_err(|e| file_error(path, e.to_string()))?;
    let mut head = Vec::with_capacity(media::mime::SNIFF_BYTES);
    (&mut file)
        .take(media::mime::SNIFF_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(|e| file_error(path, e.to_string()))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mime = media::detect_mime(&head, &file_name);
    let mut preview = None;
    let mut dimensions = (0, 0);
    if media::can_thumbnail(&mime) {
        file.seek(SeekFrom::Start(0))
            .map_err(|e| file_error(path, e.to_string()))?;
        match media::make_preview(BufReader::new(file), limits) {
            Ok(p) => {
                dimensions = (p.width, p.height);
                preview = Some(p);
            }
            Err(media::ThumbnailError::TooLarge { width, height, .. }) => {
                tracing::warn!(width, height, "image too large to preview; sending without");
                dimensions = (width, height);
            }
            Err(e) => tracing::warn!(error = %e, "no preview for the image; sending without"),
        }
    }
    Ok(Prepared {
        len,
        file_name,
        mime,
        preview,
        dimensions,
    })
}

/// An upload pass that ended early, and whether it made progress.
struct PassError {
    error: ClientError,
    progressed: bool,
}

impl Client {
    /// Where `.partial/` downloads live, and the default download directory
    /// (`{profile}/media` for [`Client::open`]).
    pub fn set_media_dir(&mut self, dir: PathBuf) {
        self.media.media_dir = Some(dir);
    }

    /// The media directory, if set.
    pub fn media_dir(&self) -> Option<&Path> {
        self.media.media_dir.as_deref()
    }

    /// Saves received attachments into `dir` as they arrive (and retries pending ones at
    /// the start of [`Client::receive`]); the events report the saved path or why it
    /// failed. `None` leaves them pending.
    pub fn set_auto_download(&mut self, dir: Option<PathBuf>) {
        self.media.auto_download = dir;
    }

    /// Reports transfer progress to `progress` (`None`: no reports).
    pub fn set_progress(&mut self, progress: Option<ProgressFn>) {
        self.media.progress = progress;
    }

    /// Whether a received file is fsynced before it gets its name (the default), so that
    /// not even a power loss can leave a file that looks complete but is not. Turning it
    /// off saves the wait for the disk where that does not matter (throw-away caches).
    pub fn set_durable_downloads(&mut self, durable: bool) {
        self.media.volatile_downloads = !durable;
    }

    /// Bounds on decoding images for previews (hostile files).
    pub fn set_decode_limits(&mut self, limits: DecodeLimits) {
        self.media.decode_limits = limits;
    }

    fn report_transfer(&mut self, t: Transfer) {
        if let Some(f) = self.media.progress.as_mut() {
            f(&t);
        }
    }

    // ------------------------------------------------------------------ sending

    /// Sends the file at `path` to `conversation` (a handle or `#GROUP`): encrypts and
    /// uploads it (see the module docs), then queues the message; [`Client::flush_outbox`]
    /// sends it. Returns the message id. If the upload is interrupted for good it stays
    /// pending and [`Client::resume_uploads`] continues it; a file that changed meanwhile
    /// is dropped with [`ClientError::File`].
    pub async fn send_file(
        &mut self,
        conversation: &str,
        path: &Path,
        options: &SendFileOptions,
    ) -> Result<String, ClientError> {
        let limits = self.media.decode_limits;
        let owned = path.to_path_buf();
        let prepared = tokio::task::spawn_blocking(move || prepare(&owned, limits))
            .await
            .map_err(join_error)??;
        let mut rng = rand::rngs::OsRng;
        let key = FileKey::generate(&mut rng);
        let nonce = NoncePrefix::generate(&mut rng);
        let source_path = std::path::absolute(path).map_err(|e| file_error(path, e.to_string()))?;
        // A view-once file carries no preview: nothing of it stays after it is opened.
        let thumbnail = prepared
            .preview
            .as_ref()
            .filter(|_| !options.view_once)
            .map(|p| p.jpeg.clone())
            .unwrap_or_default();
        let upload = NewUpload {
            conversation: conversation.to_string(),
            source_path,
            source_len: prepared.len,
            ciphertext_len: media::ciphertext_len(prepared.len),
            key: *key.expose(),
            nonce_prefix: nonce.as_bytes().to_vec(),
            chunk_size: CHUNK_SIZE,
            file_name: options
                .file_name
                .clone()
                .unwrap_or(prepared.file_name.clone()),
            mime: prepared.mime,
            thumbnail,
            width: prepared.dimensions.0,
            height: prepared.dimensions.1,
            voice: options.voice,
            caption: options.caption.clone(),
            view_once: options.view_once,
        };
        let id = self
            .profile
            .create_upload(&upload, unix_ms())
            .map_err(|e| match e {
                E2eError::Protocol(reason) => file_error(path, reason),
                other => other.into(),
            })?;
        self.run_upload(&id).await
    }

    /// Continues every upload left unfinished (a killed process, a network failure):
    /// each completed one becomes a queued message. Returns, per upload, the message id
    /// or why it failed (a file that changed or vanished is dropped; one that failed on
    /// the network stays pending).
    pub async fn resume_uploads(
        &mut self,
    ) -> Result<Vec<(String, Result<String, ClientError>)>, ClientError> {
        let pending = self.profile.pending_uploads()?;
        let mut out = Vec::with_capacity(pending.len());
        for upload in pending {
            let result = self.run_upload(&upload.id).await;
            out.push((upload.id, result));
        }
        Ok(out)
    }

    /// Uploads until complete, retrying transient failures with backoff (the counter
    /// restarts whenever a pass made progress).
    async fn run_upload(&mut self, id: &str) -> Result<String, ClientError> {
        let mut attempt = 0;
        let mut recreated = false;
        loop {
            match self.upload_pass(id, &mut recreated).await {
                Ok(message_id) => return Ok(message_id),
                Err(PassError { error, progressed }) => {
                    let final_error = match &error {
                        ClientError::File { .. } | ClientError::Attachment(_) => true,
                        // The blob vanished mid-upload: the next pass finds out and
                        // creates it anew (once).
                        ClientError::Api { status: 404, .. } => false,
                        ClientError::Api { .. } => !error.is_transient(),
                        _ => false,
                    };
                    let retry = error.is_transient()
                        || matches!(error, ClientError::Api { status: 404, .. });
                    if final_error {
                        tracing::warn!(upload = %id, error = %error, "upload dropped");
                        self.profile.cancel_upload(id)?;
                        self.finish_report(Direction::Upload, id);
                        return Err(error);
                    }
                    if !retry {
                        return Err(error);
                    }
                    if progressed {
                        attempt = 0;
                    }
                    attempt += 1;
                    if attempt >= self.options.max_attempts {
                        self.finish_report(Direction::Upload, id);
                        return Err(error);
                    }
                    let delay = self.backoff(attempt - 1);
                    tracing::info!(upload = %id, error = %error, ?delay, "upload interrupted; resuming");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    fn finish_report(&mut self, direction: Direction, id: &str) {
        self.report_transfer(Transfer {
            direction,
            id: id.to_string(),
            name: String::new(),
            done: 0,
            total: 0,
            finished: true,
        });
    }

    /// The group a conversation's blobs are bound to: its send group, creating the 1:1
    /// conversation's group first if there is none yet.
    async fn ensure_send_group(&mut self, conversation: &str) -> Result<Vec<u8>, ClientError> {
        if let Some(g) = self.profile.send_group_id(conversation)? {
            return Ok(g);
        }
        if !hushwire_e2e::group::is_group_name(conversation) {
            let suite = match self
                .profile
                .conversations()?
                .into_iter()
                .find(|c| c.name == conversation)
            {
                Some(c) => c.suite,
                None => self.profile.default_suite()?,
            };
            self.start_conversation(conversation, suite).await?;
        }
        let mut events = Vec::new();
        self.flush_outbox(Duration::from_secs(30), &mut |e| events.push(e))
            .await?;
        self.events.extend(events);
        self.profile.send_group_id(conversation)?.ok_or_else(|| {
            ClientError::Protocol(format!("{conversation} has no group to send in yet"))
        })
    }

    /// Creates the blob of an upload (or a new one when the old one is gone).
    async fn create_blob(&mut self, up: &PendingUpload) -> Result<(Vec<u8>, u32), ClientError> {
        let group_id = match &up.group_id {
            Some(g) => g.clone(),
            None => self.ensure_send_group(&up.conversation).await?,
        };
        let req = self.signed(ApiRequest::create_blob(&wire::CreateBlob {
            size: up.attachment.ciphertext_size,
            group_id: group_id.clone().into(),
        }))?;
        let created: wire::BlobCreated = self.api.call(req).await.map_err(|e| match e {
            ClientError::Api {
                code: ErrorCode::TooLarge,
                message,
                ..
            } => file_error(
                &up.source_path,
                format!("too large for this server: {message}"),
            ),
            ClientError::Api {
                code: ErrorCode::QuotaExceeded,
                message,
                ..
            } => file_error(
                &up.source_path,
                format!("storage quota exceeded: {message}"),
            ),
            ClientError::Api {
                status: 404,
                message,
                ..
            } => ClientError::Attachment(format!(
                "the server does not count this device in the conversation's group: {message}"
            )),
            other => other,
        })?;
        let part_size = created.part_size;
        if created.blob_id.len() != hushwire_proto::limits::BLOB_ID_BYTES
            || part_size == 0
            || part_size as usize > MAX_BLOB_PART_BYTES
        {
            return Err(ClientError::Protocol(format!(
                "the server created a blob with a {}-byte id and {part_size}-byte parts",
                created.blob_id.len()
            )));
        }
        self.profile
            .upload_blob_created(&up.id, &group_id, &created.blob_id, part_size)?;
        Ok((created.blob_id.to_vec(), part_size))
    }

    async fn blob_status(&self, blob_id: &[u8]) -> Result<Option<wire::BlobStatus>, ClientError> {
        let req = self.signed(ApiRequest::blob_status(blob_id))?;
        match self.api.call::<wire::BlobStatus>(req).await {
            Ok(s) => Ok(Some(s)),
            Err(ClientError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One pass over the file: create the blob if needed, ask what is missing, seal the
    /// file from the start and PUT the missing parts. Done: the message id.
    async fn upload_pass(&mut self, id: &str, recreated: &mut bool) -> Result<String, PassError> {
        let fail = |error: ClientError| PassError {
            error,
            progressed: false,
        };
        let up = self
            .profile
            .pending_upload(id)
            .map_err(|e| fail(e.into()))?
            .ok_or_else(|| fail(ClientError::Protocol(format!("no upload {id} in progress"))))?;
        let path = up.source_path.clone();
        let len = std::fs::metadata(&path)
            .map_err(|e| fail(file_error(&path, format!("cannot read it any more: {e}"))))?
            .len();
        if len != up.source_len {
            return Err(fail(file_error(
                &path,
                format!(
                    "it changed since the upload started ({} bytes then, {len} now)",
                    up.source_len
                ),
            )));
        }
        let total = up.attachment.ciphertext_size;
        if total != media::ciphertext_len(len) || up.attachment.chunk_size != CHUNK_SIZE {
            return Err(fail(ClientError::Protocol("corrupt upload record".into())));
        }
        let key = FileKey::from_slice(&up.attachment.key)
            .ok_or_else(|| fail(ClientError::Protocol("corrupt upload key".into())))?;
        let nonce = NoncePrefix::from_slice(&up.attachment.nonce_prefix)
            .ok_or_else(|| fail(ClientError::Protocol("corrupt upload nonce".into())))?;

        // Which blob, and what it is missing.
        let existing = match (&up.blob_id, up.part_size) {
            (Some(b), Some(ps)) => match self.blob_status(b).await.map_err(fail)? {
                Some(st) if st.size == total && st.part_size == ps => {
                    Some((b.clone(), ps, st.missing_parts, st.complete))
                }
                Some(_) => {
                    return Err(fail(ClientError::Protocol(
                        "the server's blob does not match the upload".into(),
                    )));
                }
                None => {
                    // Expired, or swept as abandoned: start over with a new blob (once
                    // per run, so a server that keeps losing it cannot loop us).
                    if *recreated {
                        return Err(fail(ClientError::Protocol(
                            "the server lost the upload again".into(),
                        )));
                    }
                    *recreated = true;
                    tracing::info!(upload = %id, "the blob is gone from the server; uploading again");
                    None
                }
            },
            _ => None,
        };
        let (blob_id, part_size, mut missing, mut complete, parts_done, prefix) = match existing {
            Some((b, ps, missing, complete)) => {
                (b, ps, missing, complete, up.parts_done, up.prefix_sha256)
            }
            None => {
                let (b, ps) = self.create_blob(&up).await.map_err(fail)?;
                let parts = total.div_ceil(u64::from(ps));
                let all: Vec<u32> = (0..u32::try_from(parts).unwrap_or(u32::MAX)).collect();
                (b, ps, all, false, 0, None)
            }
        };
        if part_size == 0 || part_size as usize > MAX_BLOB_PART_BYTES {
            return Err(fail(ClientError::Protocol(format!(
                "bad part size {part_size}"
            ))));
        }
        let parts = u32::try_from(total.div_ceil(u64::from(part_size)))
            .map_err(|_| fail(ClientError::Protocol("too many parts".into())))?;
        missing.sort_unstable();
        let part_timeout =
            Duration::from_secs(30 + u64::from(part_size) / MIN_UPLOAD_BYTES_PER_SEC);
        let name = up.attachment.file_name.clone();

        // Seal part i+1 on a worker while part i is on the wire.
        let file = File::open(&path).map_err(|e| fail(file_error(&path, e.to_string())))?;
        let reader =
            SealingReader::new(BufReader::with_capacity(IO_BUFFER, file), len, &key, &nonce);
        type Sealed = (
            SealingReader<BufReader<File>>,
            Result<(Vec<u8>, [u8; 32]), MediaError>,
        );
        let seal_part = |mut reader: SealingReader<BufReader<File>>, send: bool, n: usize| {
            tokio::task::spawn_blocking(move || -> Sealed {
                let result = if send {
                    let mut part = Vec::with_capacity(n);
                    reader.fill(&mut part, n).map(|_| part)
                } else {
                    reader.skip(n).map(|_| Vec::new())
                };
                let hash = reader.ciphertext_sha256_so_far();
                (reader, result.map(|p| (p, hash)))
            })
        };
        let part_len = |i: u32| -> usize {
            let start = u64::from(i) * u64::from(part_size);
            usize::try_from((total - start).min(u64::from(part_size))).unwrap_or(0)
        };
        // Parts past the confirmed prefix that the server has anyway (an answer lost on
        // the way) are sent again: the server accepts the same bytes and refuses other
        // ones, so a file that changed there cannot go unnoticed.
        let is_missing = |i: u32| i >= parts_done || missing.binary_search(&i).is_ok();
        let mut progressed = false;
        let mut next = (parts > 0).then(|| seal_part(reader, is_missing(0), part_len(0)));
        let mut reader_back = None;
        let mut recorded = parts_done;
        for index in 0..parts {
            let Some(task) = next.take() else { break };
            let (reader, sealed) = task.await.map_err(|e| PassError {
                error: join_error(e),
                progressed,
            })?;
            let (part, hash) = sealed.map_err(|e| PassError {
                error: match e {
                    MediaError::SourceChanged(r) => file_error(&path, r),
                    MediaError::Io(e) => file_error(&path, e.to_string()),
                    other => ClientError::Attachment(other.to_string()),
                },
                progressed,
            })?;
            let send = is_missing(index);
            if index + 1 == parts_done
                && let Some(expected) = prefix
                && expected != hash
            {
                return Err(PassError {
                    error: file_error(&path, "it changed since the upload started"),
                    progressed,
                });
            }
            if index + 1 < parts {
                next = Some(seal_part(
                    reader,
                    is_missing(index + 1),
                    part_len(index + 1),
                ));
            } else {
                reader_back = Some(reader);
            }
            if send {
                let req = self
                    .signed(ApiRequest::put_blob_part(&blob_id, index, part))
                    .map_err(|error| PassError { error, progressed })?;
                let status: wire::BlobStatus = self
                    .api
                    .call_with_timeout(req, part_timeout)
                    .await
                    .map_err(|error| PassError {
                        error: match error {
                            ClientError::Api {
                                code: ErrorCode::BadRequest,
                                message,
                                ..
                            } => file_error(
                                &path,
                                format!(
                                    "the server refused part {index} ({message}); \
                                     did the file change since the upload started?"
                                ),
                            ),
                            other => other,
                        },
                        progressed,
                    })?;
                progressed = true;
                complete = status.complete;
            }
            // Every part up to here is on the server (sent now, or found there): record
            // the count and their hash for a later resume.
            if index + 1 > recorded {
                recorded = index + 1;
                self.profile
                    .upload_progress(id, recorded, &hash)
                    .map_err(|e| PassError {
                        error: e.into(),
                        progressed,
                    })?;
            }
            let done = (u64::from(index) + 1) * u64::from(part_size);
            self.report_transfer(Transfer {
                direction: Direction::Upload,
                id: id.to_string(),
                name: name.clone(),
                done: done.min(total),
                total,
                finished: false,
            });
        }
        let reader = reader_back.ok_or_else(|| fail(ClientError::Protocol("no parts".into())))?;
        let sealed = reader.finish().map_err(|e| PassError {
            error: ClientError::Attachment(e.to_string()),
            progressed,
        })?;
        if !complete {
            // Parts we skipped as stored must have gone missing: ask again next pass.
            let st = self
                .blob_status(&blob_id)
                .await
                .map_err(|error| PassError { error, progressed })?;
            if !st.is_some_and(|s| s.complete) {
                return Err(PassError {
                    error: ClientError::Timeout(
                        "the server still misses parts of the upload".into(),
                    ),
                    progressed,
                });
            }
        }
        let message_id = self
            .profile
            .finish_upload(
                id,
                &sealed.ciphertext_sha256,
                &sealed.plaintext_sha256,
                unix_ms(),
            )
            .map_err(|e| PassError {
                error: e.into(),
                progressed,
            })?;
        self.report_transfer(Transfer {
            direction: Direction::Upload,
            id: id.to_string(),
            name,
            done: total,
            total,
            finished: true,
        });
        Ok(message_id)
    }

    // ------------------------------------------------------------------ receiving

    /// Downloads, verifies and decrypts the attachment of message `id` from `sender`
    /// into `dir` under its sanitized name (see the module docs); returns the path. A
    /// download interrupted by the network resumes where it stopped (here, with retries,
    /// or in a later call). Verification failures and blobs gone from the server are
    /// [`ClientError::Attachment`] and recorded: the attachment is no longer pending.
    pub async fn download_attachment(
        &mut self,
        sender: &str,
        id: &str,
        dir: &Path,
    ) -> Result<PathBuf, ClientError> {
        let record = self
            .profile
            .attachment(sender, id)?
            .ok_or_else(|| ClientError::Attachment(format!("message {id} has no attachment")))?;
        if let Some(path) = &record.info.path {
            return Ok(path.clone());
        }
        let result = self.download_record(&record, dir).await;
        match &result {
            Ok(path) => {
                self.profile.set_attachment_path(sender, id, path)?;
            }
            Err(ClientError::Attachment(reason)) => {
                self.profile.set_attachment_error(sender, id, reason)?;
            }
            Err(_) => {}
        }
        self.finish_report(Direction::Download, id);
        result
    }

    /// Opens received view-once message `id`: an attachment is first downloaded and
    /// decrypted into `dir` (the caller shows it, then deletes the file), then the
    /// message is erased from this device's store ([`Profile::view_once`]). Returns the
    /// message and the file's path. A failed download leaves the message unopened.
    ///
    /// [`Profile::view_once`]: hushwire_e2e::Profile::view_once
    pub async fn open_view_once(
        &mut self,
        id: &str,
        dir: &Path,
    ) -> Result<(StoredMessage, Option<PathBuf>), ClientError> {
        let path = match self.profile.view_once_attachment(id)? {
            Some(record) => Some(self.download_record(&record, dir).await?),
            None => None,
        };
        match self.profile.view_once(id, unix_ms()) {
            Ok(message) => Ok((message, path)),
            Err(e) => {
                if let Some(path) = path {
                    let _ = std::fs::remove_file(path);
                }
                Err(e.into())
            }
        }
    }

    async fn download_record(
        &mut self,
        record: &AttachmentRecord,
        dir: &Path,
    ) -> Result<PathBuf, ClientError> {
        let a = &record.wire;
        let bad = |what: &str| ClientError::Attachment(format!("malformed attachment: {what}"));
        let key = FileKey::from_slice(&a.key).ok_or_else(|| bad("key"))?;
        let nonce = NoncePrefix::from_slice(&a.nonce_prefix).ok_or_else(|| bad("nonce prefix"))?;
        let cipher_sha: [u8; 32] = a
            .ciphertext_sha256
            .as_ref()
            .try_into()
            .map_err(|_| bad("ciphertext hash"))?;
        let plain_sha: [u8; 32] = a
            .plaintext_sha256
            .as_ref()
            .try_into()
            .map_err(|_| bad("plaintext hash"))?;
        if media::plaintext_len_of(a.ciphertext_size, a.chunk_size) != Some(a.size) {
            return Err(bad("its sizes do not fit the chunk format"));
        }
        let media_dir = self
            .media
            .media_dir
            .clone()
            .ok_or_else(|| ClientError::Protocol("no media directory set".into()))?;
        let partial_dir = media_dir.join(".partial");
        std::fs::create_dir_all(&partial_dir)
            .map_err(local_io(format!("cannot create {}", partial_dir.display())))?;
        std::fs::create_dir_all(dir)
            .map_err(local_io(format!("cannot create {}", dir.display())))?;
        let part_path = partial_dir.join(format!("{}.part", hex(&a.blob_id)));
        let job = DownloadJob {
            durable: !self.media.volatile_downloads,
            part_path: part_path.clone(),
            blob_hex: hex(&a.blob_id),
            dest_dir: dir.to_path_buf(),
            name: media::sanitize_file_name(&a.file_name),
            total: a.ciphertext_size,
            cipher_sha,
            expected: Expected {
                key,
                nonce,
                chunk_size: a.chunk_size,
                plaintext_len: a.size,
                plaintext_sha256: plain_sha,
            },
        };
        let mut attempt = 0;
        let mut restarted = false;
        let mut retried_from_scratch = false;
        loop {
            let before = std::fs::metadata(&part_path).map(|m| m.len()).unwrap_or(0);
            match self.download_pass(record, &job, &mut restarted).await {
                Ok(path) => {
                    let _ = std::fs::remove_file(&part_path);
                    return Ok(path);
                }
                Err(ClientError::Attachment(reason)) if before > 0 && !retried_from_scratch => {
                    // What an earlier run left in `.part` may be what failed (a crash can
                    // tear it): verify a fresh download before calling the blob bad.
                    tracing::info!(%reason, "resumed download failed verification; downloading it again");
                    retried_from_scratch = true;
                    std::fs::remove_file(&part_path)
                        .map_err(local_io("cannot remove a partial download"))?;
                }
                Err(e @ ClientError::Attachment(_)) => {
                    let _ = std::fs::remove_file(&part_path);
                    return Err(e);
                }
                Err(ClientError::Api {
                    status: 404,
                    message,
                    ..
                }) => {
                    let _ = std::fs::remove_file(&part_path);
                    return Err(ClientError::Attachment(format!(
                        "the file is not on the server (expired, deleted, or not shared with this device): {message}"
                    )));
                }
                Err(e) if e.is_transient() => {
                    let after = std::fs::metadata(&part_path).map(|m| m.len()).unwrap_or(0);
                    if after > before {
                        attempt = 0;
                    }
                    attempt += 1;
                    if attempt >= self.options.max_attempts {
                        return Err(e);
                    }
                    let delay = self.backoff(attempt - 1);
                    tracing::info!(error = %e, ?delay, "download interrupted; resuming");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One request: resume from what `.part` holds, stream the rest through the worker.
    async fn download_pass(
        &mut self,
        record: &AttachmentRecord,
        job: &DownloadJob,
        restarted: &mut bool,
    ) -> Result<PathBuf, ClientError> {
        let (tx, rx) = mpsc::channel::<Bytes>(DOWNLOAD_QUEUE);
        let (have_tx, have_rx) = tokio::sync::oneshot::channel();
        let worker_job = job.clone();
        let worker = tokio::task::spawn_blocking(move || worker_job.run(have_tx, rx));
        // The worker locks `.part` and says how much of it is there.
        let Ok(have) = have_rx.await else {
            return match worker.await.map_err(join_error)? {
                Ok(_) => Err(ClientError::Protocol("the download worker stopped".into())),
                Err(e) => Err(e),
            };
        };
        let blob_id = record.wire.blob_id.to_vec();
        let mut stream = None;
        if have < job.total {
            let req = self.signed(ApiRequest::download_blob(&blob_id, have))?;
            let restart = match self.api.open_stream(req).await {
                Ok(s) => {
                    let resumed_ok =
                        have == 0 || (s.status() == 206 && s.content_range_start() == Some(have));
                    stream = Some(s);
                    !resumed_ok
                }
                Err(ClientError::Api { status: 416, .. }) => true,
                Err(e) => {
                    drop(tx);
                    let _ = worker.await;
                    return Err(e);
                }
            };
            if restart {
                // The server ignored the range, answered another one, or holds less than
                // `.part`: start over, once.
                drop(tx);
                drop(stream);
                let _ = worker.await;
                if *restarted {
                    return Err(ClientError::Protocol(
                        "the server does not resume downloads".into(),
                    ));
                }
                *restarted = true;
                std::fs::remove_file(&job.part_path)
                    .map_err(local_io("cannot remove a partial download"))?;
                return Err(ClientError::Timeout("restarting the download".into()));
            }
        }
        let mut received = have;
        let mut batch = bytes::BytesMut::with_capacity(DOWNLOAD_BATCH);
        let mut network: Result<(), ClientError> = Ok(());
        let mut ended = stream.is_none();
        if let Some(s) = stream.as_mut() {
            loop {
                match tokio::time::timeout(DOWNLOAD_IDLE_TIMEOUT, s.next_chunk()).await {
                    Err(_) => {
                        network = Err(ClientError::Timeout("the download stalled".into()));
                        break;
                    }
                    Ok(None) => {
                        ended = true;
                        break;
                    }
                    Ok(Some(Err(e))) => {
                        network = Err(e);
                        break;
                    }
                    Ok(Some(Ok(chunk))) => {
                        received += chunk.len() as u64;
                        // Handed over in batches: one wake-up of the worker per
                        // DOWNLOAD_BATCH bytes, not per TLS record.
                        batch.extend_from_slice(&chunk);
                        if batch.len() < DOWNLOAD_BATCH {
                            continue;
                        }
                        if tx.send(batch.split().freeze()).await.is_err() {
                            break; // the worker stopped: its result says why
                        }
                        self.report_transfer(Transfer {
                            direction: Direction::Download,
                            id: record.message.id.clone(),
                            name: job.name.clone(),
                            done: received.min(job.total),
                            total: job.total,
                            finished: false,
                        });
                    }
                }
            }
        }
        // What arrived before an interruption is kept (in `.part`) all the same.
        if !batch.is_empty() {
            let _ = tx.send(batch.split().freeze()).await;
        }
        drop(tx);
        drop(stream);
        match worker.await.map_err(join_error)? {
            Ok(Some(path)) => Ok(path),
            Ok(None) => {
                network?;
                if ended {
                    return Err(ClientError::Attachment(format!(
                        "the server's blob ended after {received} of the {} bytes the message declares",
                        job.total
                    )));
                }
                Err(ClientError::Timeout("the download stopped early".into()))
            }
            Err(e) => Err(e),
        }
    }

    /// Tries every pending download once per session (auto-download): events report the
    /// saved path or the error.
    pub(crate) async fn download_pending(&mut self) -> Result<(), ClientError> {
        let Some(dir) = self.media.auto_download.clone() else {
            return Ok(());
        };
        for record in self.profile.pending_downloads()? {
            let key = (record.message.from.clone(), record.message.id.clone());
            if !self.media.tried.insert(key) {
                continue;
            }
            let event = self.download_for_event(record, &dir).await?;
            self.events.push_back(event);
        }
        Ok(())
    }

    /// Events of a stored envelope: with auto-download on, each new attachment is
    /// downloaded first and its event carries the path or the error.
    pub(crate) async fn deliver_events(&mut self, events: Vec<Event>) -> Result<(), ClientError> {
        for event in events {
            match (event, self.media.auto_download.clone()) {
                (Event::Attachment(m, info), Some(dir)) if info.path.is_none() && !m.view_once => {
                    self.media.tried.insert((m.from.clone(), m.id.clone()));
                    let record = self.profile.attachment(&m.from, &m.id)?;
                    let event = match record {
                        Some(r) => self.download_for_event(r, &dir).await?,
                        None => Event::Attachment(m, info),
                    };
                    self.events.push_back(event);
                }
                (event, _) => self.events.push_back(event),
            }
        }
        Ok(())
    }

    async fn download_for_event(
        &mut self,
        record: AttachmentRecord,
        dir: &Path,
    ) -> Result<Event, ClientError> {
        let AttachmentRecord {
            message, mut info, ..
        } = record;
        match self
            .download_attachment(&message.from, &message.id, dir)
            .await
        {
            Ok(path) => info.path = Some(path),
            // The local store failing is not about this attachment: stop.
            Err(ClientError::E2e(e)) => return Err(e.into()),
            Err(e) => {
                tracing::warn!(message = %message.id, error = %e, "attachment not downloaded");
                info.error = Some(if matches!(e, ClientError::Attachment(_)) {
                    e.to_string()
                } else {
                    format!("{e} (the download resumes with the next receive)")
                });
            }
        }
        Ok(Event::Attachment(message, info))
    }
}

/// The download worker's job: hash the ciphertext as it arrives and decrypt it into the
/// partial file, which holds the authenticated plaintext of whole chunks so far (the
/// state a resumed download continues from), then move it to its name.
#[derive(Clone)]
struct DownloadJob {
    /// fsync the plaintext before naming it.
    durable: bool,
    /// `{media_dir}/.partial/{blob id}.part`.
    part_path: PathBuf,
    blob_hex: String,
    dest_dir: PathBuf,
    name: String,
    total: u64,
    cipher_sha: [u8; 32],
    expected: Expected,
}

impl DownloadJob {
    /// Resumes from what the partial file holds (its whole chunks are sealed again to
    /// find the ciphertext offset and hash), says where the download continues on
    /// `have_tx`, then takes what arrives on `rx`. When the whole ciphertext is there
    /// and verifies: the saved path. When the bytes ran out early: `None` (the partial
    /// file keeps what authenticated). Anything failing verification: `Attachment`.
    fn run(
        self,
        have_tx: tokio::sync::oneshot::Sender<u64>,
        mut rx: mpsc::Receiver<Bytes>,
    ) -> Result<Option<PathBuf>, ClientError> {
        let io = |context: &str| local_io(format!("{context} {}", self.part_path.display()));
        let mut part = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&self.part_path)
            .map_err(io("cannot open"))?;
        // One download of a blob at a time (two `receive`s of one profile).
        match part.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(ClientError::Timeout(
                    "another process is downloading this file".into(),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io("cannot lock")(e)),
        }
        let verify = |e: MediaError| match e {
            MediaError::Io(e) => ClientError::LocalIo {
                context: format!("reading {}", self.part_path.display()),
                source: e,
            },
            other => ClientError::Attachment(other.to_string()),
        };
        // Whole chunks only, never the final one (it is written last, just before the
        // file is moved to its name).
        let cs = u64::from(self.expected.chunk_size);
        let len = part.metadata().map_err(io("cannot read"))?.len();
        let chunks = media::chunk_count(self.expected.plaintext_len, self.expected.chunk_size);
        let keep = (len / cs).min(chunks.saturating_sub(1)) * cs;
        if keep != len {
            part.set_len(keep).map_err(io("cannot truncate"))?;
        }
        part.seek(SeekFrom::Start(0)).map_err(io("cannot read"))?;
        let (opener, resumed) = Opener::resume(
            &self.expected.key,
            &self.expected.nonce,
            self.expected.chunk_size,
            self.expected.plaintext_len,
            BufReader::with_capacity(IO_BUFFER, &part),
            keep,
        )
        .map_err(verify)?;
        part.seek(SeekFrom::Start(keep))
            .map_err(io("cannot write"))?;
        let have = resumed.ciphertext_len;
        if have_tx.send(have).is_err() {
            return Ok(None);
        }
        // Two threads share the work: this one hashes the ciphertext; the opener
        // decrypts, hashes the plaintext and writes it.
        let (to_opener, from_hasher) = std::sync::mpsc::sync_channel::<ToOpener>(DOWNLOAD_QUEUE);
        let durable = self.durable;
        let part_file = &part;
        let (hashed, opened) = std::thread::scope(|scope| {
            let opener_thread = std::thread::Builder::new()
                .name("hushwire-open".into())
                .spawn_scoped(scope, move || {
                    open_stream(opener, part_file, durable, from_hasher)
                })
                .map_err(local_io("starting the download worker"));
            let hashed = self.hash_stream(resumed, &mut rx, &to_opener);
            // The opener learns whether the stream is complete.
            if let Ok((len, _)) = &hashed
                && *len == self.total
            {
                let _ = to_opener.send(ToOpener::End);
            }
            drop(to_opener);
            let opened = match opener_thread {
                Ok(handle) => handle.join().unwrap_or_else(|_| {
                    Err(ClientError::Protocol("the download worker panicked".into()))
                }),
                Err(e) => Err(e),
            };
            (hashed, opened)
        });
        // The opener's own failure (a chunk that does not authenticate, the disk) comes
        // first: the hasher then only saw it stop.
        let opened = opened?;
        let (len, cipher_sha) = hashed?;
        if len < self.total {
            return Ok(None);
        }
        if cipher_sha != self.cipher_sha {
            return Err(ClientError::Attachment(
                "the downloaded file's SHA-256 does not match the message (tampered or swapped)"
                    .into(),
            ));
        }
        let Some(opened) = opened else {
            return Err(ClientError::Protocol(
                "the download worker stopped early".into(),
            ));
        };
        if opened.plaintext_len != self.expected.plaintext_len {
            return Err(ClientError::Attachment(
                MediaError::SizeMismatch {
                    expected: self.expected.plaintext_len,
                    actual: opened.plaintext_len,
                }
                .to_string(),
            ));
        }
        if opened.plaintext_sha256 != self.expected.plaintext_sha256 {
            return Err(ClientError::Attachment(
                MediaError::HashMismatch("plaintext").to_string(),
            ));
        }
        if self.durable {
            part.sync_all()
                .map_err(local_io("writing the downloaded file"))?;
        }
        self.save(&part).map(Some)
    }

    /// Gives the verified file its name in the destination directory, never over an
    /// existing file: the first free `name (n).ext`, by hard link (atomic), or where the
    /// destination is on another file system, through a copy into a hidden temporary
    /// file there.
    fn save(&self, part: &File) -> Result<PathBuf, ClientError> {
        let mut cross_device = false;
        for n in 1..=10_000u32 {
            let target = self.dest_dir.join(media::numbered_name(&self.name, n));
            match std::fs::hard_link(&self.part_path, &target) {
                Ok(()) => {
                    let _ = std::fs::remove_file(&self.part_path);
                    return Ok(target);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
                    cross_device = true;
                    break;
                }
                Err(_) if target.symlink_metadata().is_ok() => continue,
                Err(_) => {
                    cross_device = true;
                    break;
                }
            }
        }
        if !cross_device {
            return Err(ClientError::Attachment(format!(
                "no free name for {} in {}",
                self.name,
                self.dest_dir.display()
            )));
        }
        let mut temp = TempFile::create(
            self.dest_dir
                .join(format!(".hushwire-{}.tmp", self.blob_hex)),
        )?;
        let mut src = part;
        src.seek(SeekFrom::Start(0))
            .map_err(local_io("reading the downloaded file"))?;
        std::io::copy(&mut src, &mut temp.file).map_err(local_io(format!(
            "copying the downloaded file to {}",
            self.dest_dir.display()
        )))?;
        if self.durable {
            temp.file
                .sync_all()
                .map_err(local_io("writing the downloaded file"))?;
        }
        for n in 1..=10_000u32 {
            let target = self.dest_dir.join(media::numbered_name(&self.name, n));
            match temp.persist_noclobber(&target) {
                Ok(true) => {
                    let _ = std::fs::remove_file(&self.part_path);
                    return Ok(target);
                }
                Ok(false) => continue,
                Err(e) => {
                    return Err(ClientError::LocalIo {
                        context: format!("cannot save {}", target.display()),
                        source: e,
                    });
                }
            }
        }
        Err(ClientError::Attachment(format!(
            "no free name for {} in {}",
            self.name,
            self.dest_dir.display()
        )))
    }

    /// Hashes what arrives on `rx` (after the resumed prefix) and passes it on to the
    /// opener. Returns the length and SHA-256 of the ciphertext seen (shorter than the
    /// blob when the bytes ran out).
    fn hash_stream(
        &self,
        resumed: media::ResumedPrefix,
        rx: &mut mpsc::Receiver<Bytes>,
        to_opener: &std::sync::mpsc::SyncSender<ToOpener>,
    ) -> Result<(u64, [u8; 32]), ClientError> {
        let mut hasher = resumed.ciphertext_hash;
        let mut len = resumed.ciphertext_len;
        while let Some(chunk) = rx.blocking_recv() {
            if len + chunk.len() as u64 > self.total {
                return Err(ClientError::Attachment(format!(
                    "the server sent more than the {} bytes the message declares",
                    self.total
                )));
            }
            hasher.update(&chunk);
            len += chunk.len() as u64;
            if to_opener.send(ToOpener::Data(chunk)).is_err() {
                // The opener stopped: its own result says why.
                return Err(ClientError::Protocol("the download worker stopped".into()));
            }
        }
        Ok((len, hasher.finalize().into()))
    }
}

/// From the hasher to the opener.
enum ToOpener {
    /// The next ciphertext bytes.
    Data(Bytes),
    /// The whole ciphertext was passed on: open the final chunk.
    End,
}

/// The opener thread: decrypts what arrives, appending the plaintext to `file` (fsynced
/// in the background as it grows when `durable`). `Some` once the whole ciphertext
/// opened; `None` when the stream stopped early (what authenticated is in the file).
fn open_stream(
    mut opener: Opener,
    file: &File,
    durable: bool,
    rx: std::sync::mpsc::Receiver<ToOpener>,
) -> Result<Option<media::Opened>, ClientError> {
    let verify = |e: MediaError| match e {
        MediaError::Io(e) => ClientError::LocalIo {
            context: "writing the downloaded file".into(),
            source: e,
        },
        other => ClientError::Attachment(other.to_string()),
    };
    // The plaintext reaches the disk while the download goes on, so the final fsync
    // before the file gets its name has little left to do.
    let syncer = Syncer::start(file).map_err(local_io("writing the downloaded file"))?;
    // Whole decrypted chunks (64 KiB) pass straight through a buffer this small.
    let mut out = BufWriter::with_capacity(
        CHUNK_SIZE as usize,
        SyncingWriter {
            file,
            written: 0,
            next_sync: if durable { SYNC_EVERY } else { u64::MAX },
            syncer: &syncer,
        },
    );
    let complete = loop {
        match rx.recv() {
            Ok(ToOpener::Data(chunk)) => opener.update(&chunk, &mut out).map_err(verify)?,
            Ok(ToOpener::End) => break true,
            Err(_) => break false,
        }
    };
    let opened = if complete {
        Some(opener.finish(&mut out).map_err(verify)?)
    } else {
        None
    };
    out.flush()
        .map_err(local_io("writing the downloaded file"))?;
    drop(out);
    syncer
        .finish()
        .map_err(local_io("writing the downloaded file"))?;
    Ok(opened)
}

/// A downloaded file's plaintext is fsynced in the background every this many bytes.
const SYNC_EVERY: u64 = 32 * 1024 * 1024;

/// A thread that fsyncs a file whenever poked (pokes while it syncs are merged).
struct Syncer {
    tx: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Syncer {
    fn start(file: &File) -> std::io::Result<Self> {
        let file = file.try_clone()?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("hushwire-fsync".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    file.sync_data()?;
                }
                Ok(())
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn poke(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(());
        }
    }

    /// Stops the thread; its first error, if any.
    fn finish(mut self) -> std::io::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> std::io::Result<()> {
        drop(self.tx.take());
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(std::io::Error::other("the fsync thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Writes to a file and pokes its [`Syncer`] every [`SYNC_EVERY`] bytes.
struct SyncingWriter<'a> {
    file: &'a File,
    written: u64,
    next_sync: u64,
    syncer: &'a Syncer,
}

impl Write for SyncingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written >= self.next_sync {
            self.syncer.poke();
            self.next_sync = self.written + SYNC_EVERY;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// A file removed when dropped, unless persisted.
struct TempFile {
    path: PathBuf,
    file: File,
    keep: bool,
}

impl TempFile {
    fn create(path: PathBuf) -> Result<Self, ClientError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(local_io(format!("cannot create {}", path.display())))?;
        Ok(Self {
            path,
            file,
            keep: false,
        })
    }

    /// Gives the file the name `target` unless that exists (`Ok(false)`): a hard link
    /// (atomic, never replaces), or where links are not supported a rename after a
    /// check.
    fn persist_noclobber(&mut self, target: &Path) -> std::io::Result<bool> {
        match std::fs::hard_link(&self.path, target) {
            Ok(()) => {
                self.keep = true;
                let _ = std::fs::remove_file(&self.path);
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(_) if target.symlink_metadata().is_ok() => Ok(false),
            Err(_) => {
                std::fs::rename(&self.path, target)?;
                self.keep = true;
                Ok(true)
            }
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
