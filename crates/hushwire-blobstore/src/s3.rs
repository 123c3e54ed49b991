//! S3 settings: where the bucket is (`s3://BUCKET[/prefix]`), how to reach it and with
//! which credentials (the standard AWS environment variables and/or an AWS-style
//! credentials file). Credentials are zeroized on drop and never printed: `Debug` says
//! only whether they are set.

use std::fmt;
use std::path::Path;

use object_store::path::Path as ObjectPath;
use zeroize::Zeroizing;

use crate::BlobStoreError;

/// Environment variables [`S3Settings::from_env`] reads, in order of precedence where
/// several set the same thing.
pub const S3_ENV: [&str; 9] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT",
    "AWS_ALLOW_HTTP",
];

/// Largest credentials file read (they are a few lines).
const MAX_CREDENTIALS_FILE_BYTES: u64 = 64 * 1024;

/// A parsed `s3://BUCKET[/prefix]` location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket.
    pub bucket: String,
    /// The key prefix inside it (no leading or trailing `/`), possibly empty.
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://BUCKET[/prefix]`. The bucket follows S3's naming rules (3 to 63
    /// lowercase letters, digits, `.` and `-`); the prefix is `/`-separated segments,
    /// none of them empty, `.` or `..`.
    pub fn parse(url: &str) -> Result<Self, BlobStoreError> {
        let bad = |why: &str| BlobStoreError::Config(format!("media store {url:?}: {why}"));
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("must start with s3://"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
            && bucket
                .bytes()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
            && bucket
                .bytes()
                .last()
                .is_some_and(|c| c.is_ascii_alphanumeric());
        if !bucket_ok {
            return Err(bad(
                "the bucket name must be 3 to 63 lowercase letters, digits, '.' or '-'",
            ));
        }
        if !prefix.is_empty() {
            if prefix
                .split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == "..")
            {
                return Err(bad("the prefix has an empty, '.' or '..' segment"));
            }
            if prefix
                .chars()
                .any(|c| c.is_control() || matches!(c, '?' | '#' | '\\' | '*'))
            {
                return Err(bad("the prefix has a character not allowed in a key"));
            }
            ObjectPath::parse(prefix).map_err(|e| bad(&e.to_string()))?;
        }
        Ok(Self {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        })
    }

    /// Where blob parts go in the bucket: `{prefix}/blobs`, or `blobs` without a prefix
    /// (the same layout as under a local data directory).
    pub fn blobs_prefix(&self) -> String {
        if self.prefix.is_empty() {
            crate::BLOBS_PREFIX.to_owned()
        } else {
            format!("{}/{}", self.prefix, crate::BLOBS_PREFIX)
        }
    }
}

/// Static AWS credentials. `Debug` is redacted; the secrets are zeroized on drop.
#[derive(Clone)]
pub struct S3Credentials {
    access_key_id: Zeroizing<String>,
    secret_access_key: Zeroizing<String>,
    session_token: Option<Zeroizing<String>>,
}

impl S3Credentials {
    /// Credentials from an access key id, its secret and an optional session token.
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
    ) -> Self {
        Self {
            access_key_id: Zeroizing::new(access_key_id.into()),
            secret_access_key: Zeroizing::new(secret_access_key.into()),
            session_token: session_token.map(Zeroizing::new),
        }
    }
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &"<redacted>")
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// How to reach an S3 bucket. Without credentials, `object_store` falls back to the
/// platform's providers (web identity, ECS task role, EC2 instance metadata).
#[derive(Clone, Debug, Default)]
pub struct S3Settings {
    /// Region, e.g. `eu-central-1`. Default: `us-east-1`.
    pub region: Option<String>,
    /// An S3-compatible endpoint (MinIO, Ceph, a local test server), e.g.
    /// `http://127.0.0.1:9000`. Requests then use path-style URLs.
    pub endpoint: Option<String>,
    /// Allow plain HTTP to the endpoint (a local server only).
    pub allow_http: bool,
    /// Static credentials.
    pub credentials: Option<S3Credentials>,
}

impl S3Settings {
    /// Settings from the standard AWS environment variables ([`S3_ENV`]), read through
    /// `var`: `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`),
    /// `AWS_REGION` (else `AWS_DEFAULT_REGION`), `AWS_ENDPOINT_URL_S3` (else
    /// `AWS_ENDPOINT_URL`, else `AWS_ENDPOINT`) and `AWS_ALLOW_HTTP` (`true`/`1`).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Self {
        let get = |k: &str| {
            var(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let credentials = match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => {
                Some(S3Credentials::new(id, secret, get("AWS_SESSION_TOKEN")))
            }
            _ => None,
        };
        Self {
            region: get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION")),
            endpoint: get("AWS_ENDPOINT_URL_S3")
                .or_else(|| get("AWS_ENDPOINT_URL"))
                .or_else(|| get("AWS_ENDPOINT")),
            allow_http: get("AWS_ALLOW_HTTP").is_some_and(|v| truthy(&v)),
            credentials,
        }
    }

    /// Overrides these settings with what the AWS-style credentials file at `path` sets
    /// in its `[profile]` section (`default` when `None`): `aws_access_key_id`,
    /// `aws_secret_access_key`, `aws_session_token`, and also `region`, `endpoint_url`
    /// and `allow_http` when present. The error never quotes the file's contents.
    pub fn apply_credentials_file(
        &mut self,
        path: &Path,
        profile: Option<&str>,
    ) -> Result<(), BlobStoreError> {
        use std::io::Read;
        let bad = |why: String| {
            BlobStoreError::Config(format!("S3 credentials file {}: {why}", path.display()))
        };
        let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
        let mut text = Zeroizing::new(String::new());
        file.take(MAX_CREDENTIALS_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| bad(e.to_string()))?;
        if text.len() as u64 > MAX_CREDENTIALS_FILE_BYTES {
            return Err(bad("too large".into()));
        }
        let profile = profile.unwrap_or("default");
        let found = parse_profile(&text, profile).ok_or_else(|| {
            bad(format!(
                "no [{profile}] section with aws_access_key_id and aws_secret_access_key"
            ))
        })?;
        self.credentials = Some(found.credentials);
        if let Some(region) = found.region {
            self.region = Some(region);
        }
        if let Some(endpoint) = found.endpoint {
            self.endpoint = Some(endpoint);
        }
        if let Some(allow) = found.allow_http {
            self.allow_http = allow;
        }
        Ok(())
    }
}

fn truthy(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes")
}

struct FileProfile {
    credentials: S3Credentials,
    region: Option<String>,
    endpoint: Option<String>,
    allow_http: Option<bool>,
}

/// The keys of `[profile]` (or `[profile NAME]`, as in `~/.aws/config`) in INI `text`.
fn parse_profile(text: &str, profile: &str) -> Option<FileProfile> {
    let mut in_section = false;
    let mut id = None;
    let mut secret = None;
    let mut token = None;
    let mut region = None;
    let mut endpoint = None;
    let mut allow_http = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            in_section = name == profile || name.strip_prefix("profile ") == Some(profile);
            continue;
        }
        if !in_section {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        match key.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => id = Some(Zeroizing::new(value.to_owned())),
            "aws_secret_access_key" => secret = Some(Zeroizing::new(value.to_owned())),
            "aws_session_token" => token = Some(Zeroizing::new(value.to_owned())),
            "region" => region = Some(value.to_owned()),
            "endpoint_url" => endpoint = Some(value.to_owned()),
            "allow_http" => allow_http = Some(truthy(value)),
            _ => {}
        }
    }
    let (id, secret) = (id?, secret?);
    if id.is_empty() || secret.is_empty() {
        return None;
    }
    Some(FileProfile {
        credentials: S3Credentials {
            access_key_id: id,
            secret_access_key: secret,
            session_token: token.filter(|t| !t.is_empty()),
        },
        region: region.filter(|r| !r.is_empty()),
        endpoint: endpoint.filter(|e| !e.is_empty()),
        allow_http,
    })
}

/// Builds the `object_store` client for `location` with `settings`.
pub(crate) fn build(
    location: &S3Location,
    settings: &S3Settings,
) -> Result<object_store::aws::AmazonS3, BlobStoreError> {
    let mut builder = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(&location.bucket)
        .with_region(settings.region.as_deref().unwrap_or("us-east-1"))
        .with_allow_http(settings.allow_http);
    if let Some(endpoint) = &settings.endpoint {
        if endpoint.starts_with("http://") && !settings.allow_http {
            return Err(BlobStoreError::Config(format!(
                "S3 endpoint {endpoint} is plain HTTP: set AWS_ALLOW_HTTP=true (or allow_http \
                 in the credentials file) for a local server"
            )));
        }
        builder = builder
            .with_endpoint(endpoint)
            .with_virtual_hosted_style_request(false);
    }
    if let Some(c) = &settings.credentials {
        builder = builder
            .with_access_key_id(c.access_key_id.as_str())
            .with_secret_access_key(c.secret_access_key.as_str());
        if let Some(token) = &c.session_token {
            builder = builder.with_token(token.as_str());
        }
    }
    // The builder's own Debug would print the secrets; its errors name only settings.
    builder
        .build()
        .map_err(|e| BlobStoreError::Config(format!("S3 client: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn locations_parse_and_reject() {
        let l = S3Location::parse("s3://media-bucket").unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("media-bucket", ""));
        assert_eq!(l.blobs_prefix(), "blobs");
        let l = S3Location::parse("s3://media.example/hushwire/prod/").unwrap();
        assert_eq!(l.prefix, "hushwire/prod");
        assert_eq!(l.blobs_prefix(), "hushwire/prod/blobs");
        for bad in [
            "media-bucket",
            "https://media-bucket/x",
            "s3://",
            "s3://ab",
            "s3://Upper",
            "s3://-dash",
            "s3://bucket//x",
            "s3://bucket/a/../b",
            "s3://bucket/a?b",
        ] {
            assert!(
                matches!(S3Location::parse(bad), Err(BlobStoreError::Config(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn env_settings_and_redacted_debug() {
        let env = |k: &str| {
            match k {
                "AWS_ACCESS_KEY_ID" => Some("AKIDSECRETID"),
                "AWS_SECRET_ACCESS_KEY" => Some("s3cr3t-value"),
                "AWS_SESSION_TOKEN" => Some("tok3n-value"),
                "AWS_DEFAULT_REGION" => Some("eu-west-1"),
                "AWS_ENDPOINT_URL" => Some("http://127.0.0.1:9000"),
                "AWS_ALLOW_HTTP" => Some("true"),
                _ => None,
            }
            .map(str::to_owned)
        };
        let s = S3Settings::from_env(env);
        assert_eq!(s.region.as_deref(), Some("eu-west-1"));
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(s.allow_http);
        let c = s.credentials.as_ref().unwrap();
        assert_eq!(c.access_key_id.as_str(), "AKIDSECRETID");
        assert_eq!(c.session_token.as_ref().unwrap().as_str(), "tok3n-value");
        let shown = format!("{s:?}");
        for secret in ["AKIDSECRETID", "s3cr3t-value", "tok3n-value"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("<redacted>"));
        // AWS_REGION wins over AWS_DEFAULT_REGION; a key without its secret is no
        // credential.
        let s = S3Settings::from_env(|k| {
            match k {
                "AWS_REGION" => Some("ap-south-1"),
                "AWS_DEFAULT_REGION" => Some("eu-west-1"),
                "AWS_ACCESS_KEY_ID" => Some("AKID"),
                _ => None,
            }
            .map(str::to_owned)
        });
        assert_eq!(s.region.as_deref(), Some("ap-south-1"));
        assert!(s.credentials.is_none());
        assert!(!s.allow_http);
    }

    #[test]
    fn credentials_file_overrides_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        std::fs::write(
            &path,
            "# comment\n[other]\naws_access_key_id = NOPE\naws_secret_access_key = NOPE\n\
             [default]\naws_access_key_id = AKIDFILE\naws_secret_access_key = file-secret\n\
             region = eu-north-1\nendpoint_url = http://127.0.0.1:9\nallow_http = true\n",
        )
        .unwrap();
        let mut s = S3Settings::from_env(|k| {
            match k {
                "AWS_ACCESS_KEY_ID" => Some("AKIDENV"),
                "AWS_SECRET_ACCESS_KEY" => Some("env-secret"),
                "AWS_REGION" => Some("us-west-2"),
                _ => None,
            }
            .map(str::to_owned)
        });
        s.apply_credentials_file(&path, None).unwrap();
        let c = s.credentials.as_ref().unwrap();
        assert_eq!(c.access_key_id.as_str(), "AKIDFILE");
        assert_eq!(c.secret_access_key.as_str(), "file-secret");
        assert_eq!(s.region.as_deref(), Some("eu-north-1"));
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9"));
        assert!(s.allow_http);
        s.apply_credentials_file(&path, Some("other")).unwrap();
        assert_eq!(
            s.credentials.as_ref().unwrap().access_key_id.as_str(),
            "NOPE"
        );
        // A missing profile or file is a configuration error that quotes no secret.
        let err = s
            .apply_credentials_file(&path, Some("absent"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[absent]") && !err.contains("file-secret"),
            "{err}"
        );
        assert!(matches!(
            s.apply_credentials_file(&dir.path().join("nope"), None),
            Err(BlobStoreError::Config(_))
        ));
    }

    #[test]
    fn plain_http_endpoint_needs_allow_http() {
        let loc = S3Location::parse("s3://bucket").unwrap();
        let mut s = S3Settings {
            endpoint: Some("http://127.0.0.1:9".into()),
            credentials: Some(S3Credentials::new("a", "b", None)),
            ..S3Settings::default()
        };
        let err = build(&loc, &s).unwrap_err().to_string();
        assert!(err.contains("AWS_ALLOW_HTTP"), "{err}");
        s.allow_http = true;
        build(&loc, &s).unwrap();
    }
}
