//! The object store holding media bytes, through `object_store`: local files under the
//! data directory (`natter serve`) or an S3-compatible bucket (a cluster: MinIO, S3...).
//!
//! Key layout (every key is written once and never overwritten, so deleting one can
//! never delete newer content):
//! - `blobs/<random id>`: a stored content (its `BlobRecord.key`);
//! - `thumbs/<random id>.jpg`: an image's thumbnail;
//! - `parts/<upload id>/<offset, 20 digits>`: one `PATCH` of a resumable upload.

use std::{ops::Range, path::Path, sync::Arc};

use bytes::Bytes;
use futures::{StreamExt as _, stream::BoxStream};
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt as _, WriteMultipart, aws::AmazonS3Builder,
    local::LocalFileSystem, path::Path as ObjectPath, prefix::PrefixStore,
};
use sha2::{Digest as _, Sha256};

/// Part size of streaming writes: S3's minimum part size. At most two parts are in
/// flight per writer, so an upload holds about 15 MiB at most, whatever its size.
pub const PART_BYTES: usize = 5 << 20;
const PARTS_IN_FLIGHT: usize = 2;

pub type ObjectError = object_store::Error;

/// Where an S3-compatible store is and how to sign in to it.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// e.g. `http://127.0.0.1:9000` for MinIO; AWS when `None`.
    pub endpoint: Option<String>,
    /// `us-east-1` when `None`.
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Needed for a plain-HTTP endpoint.
    pub allow_http: bool,
}

/// Bytes one read of a local download takes (one blocking read each).
const LOCAL_READ_BYTES: u64 = 1 << 20;

/// The media object store. Cheap to clone.
#[derive(Clone)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    describe: String,
    /// Local files: downloads read ranges (object_store's local stream is one blocking
    /// task per 8 KiB); remote stores stream one response.
    local: bool,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

impl Objects {
    /// `spec` is `s3://bucket[/prefix]` (credentials, region and endpoint from the
    /// standard `AWS_*` environment variables: `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`) or a
    /// local directory (created if missing; `file://` optional).
    pub fn open(spec: &str) -> Result<Objects, String> {
        if let Some(rest) = spec.strip_prefix("s3://") {
            let (bucket, prefix) = match rest.split_once('/') {
                Some((b, p)) => (b, p),
                None => (rest, ""),
            };
            let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
            let options = S3Options {
                endpoint: env("AWS_ENDPOINT_URL").or_else(|| env("AWS_ENDPOINT")),
                region: env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")),
                access_key_id: env("AWS_ACCESS_KEY_ID"),
                secret_access_key: env("AWS_SECRET_ACCESS_KEY"),
                allow_http: env("AWS_ALLOW_HTTP").is_some_and(|v| v == "true" || v == "1"),
            };
            return Objects::s3(bucket, prefix, options)
                .map_err(|e| format!("media store `{spec}`: {e}"));
        }
        let dir = spec.strip_prefix("file://").unwrap_or(spec);
        Objects::local(Path::new(dir))
    }

    /// Objects in an S3-compatible bucket, under `prefix` (may be empty). Without
    /// credentials in `options`, object_store looks for instance credentials.
    pub fn s3(bucket: &str, prefix: &str, options: S3Options) -> Result<Objects, String> {
        // object_store's S3 client speaks TLS through rustls; natter links only the ring
        // provider, which must be installed once per process (a second install fails
        // harmlessly).
        let _ = rustls::crypto::ring::default_provider().install_default();
        if bucket.is_empty() {
            return Err("no bucket".into());
        }
        let prefix = prefix.trim_matches('/');
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(options.region.as_deref().unwrap_or("us-east-1"))
            .with_allow_http(options.allow_http);
        if let Some(endpoint) = &options.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let (Some(key), Some(secret)) = (&options.access_key_id, &options.secret_access_key) {
            builder = builder
                .with_access_key_id(key)
                .with_secret_access_key(secret);
        }
        let s3 = builder.build().map_err(|e| e.to_string())?;
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, prefix))
        };
        Ok(Objects {
            store,
            describe: format!("s3://{bucket}/{prefix}"),
            local: false,
        })
    }

    /// Objects under a local directory (created if missing).
    pub fn local(dir: &Path) -> Result<Objects, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("media store {}: {e}", dir.display()))?;
        let fs = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| format!("media store {}: {e}", dir.display()))?;
        Ok(Objects {
            store: Arc::new(fs),
            describe: dir.display().to_string(),
            local: true,
        })
    }

    pub fn blob_key(id: &str) -> String {
        format!("blobs/{id}")
    }

    pub fn thumbnail_key(id: &str) -> String {
        format!("thumbs/{id}.jpg")
    }

    pub fn part_key(upload: &str, offset: u64) -> String {
        format!("parts/{upload}/{offset:020}")
    }

    /// A streaming writer of a new object.
    pub async fn writer(&self, key: &str) -> Result<Writer, ObjectError> {
        let upload = self.store.put_multipart(&ObjectPath::from(key)).await?;
        Ok(Writer {
            inner: WriteMultipart::new_with_chunk_size(upload, PART_BYTES),
            hasher: Sha256::new(),
            len: 0,
        })
    }

    /// Writes a small object in one request.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), ObjectError> {
        self.store
            .put(&ObjectPath::from(key), bytes.into())
            .await
            .map(|_| ())
    }

    /// Deletes an object; a missing one is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        match self.store.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes keys, logging (not failing on) errors: for cleanups whose failure only
    /// leaves garbage behind.
    pub async fn delete_quietly(&self, keys: &[&str]) {
        for key in keys.iter().filter(|k| !k.is_empty()) {
            if let Err(e) = self.delete(key).await {
                tracing::warn!(key, error = %e, "could not delete a media object; it stays as garbage");
            }
        }
    }

    /// The whole object (callers bound its size first).
    pub async fn read_all(&self, key: &str) -> Result<Bytes, ObjectError> {
        self.store.get(&ObjectPath::from(key)).await?.bytes().await
    }

    /// Bytes `range` of an object (the range must lie within it).
    pub async fn read_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, ObjectError> {
        self.store.get_range(&ObjectPath::from(key), range).await
    }

    /// An object's size.
    pub async fn size(&self, key: &str) -> Result<u64, ObjectError> {
        Ok(self.store.head(&ObjectPath::from(key)).await?.size)
    }

    /// Bytes `range` of an object as a stream. The range must lie within the object (the
    /// caller checks against the stored size: some S3 servers answer an out-of-bounds
    /// range with an error that clients retry). The first read happens before this
    /// returns, so a missing object is an error here, not in the middle of a response.
    pub async fn stream(
        &self,
        key: &str,
        range: Range<u64>,
    ) -> Result<BoxStream<'static, Result<Bytes, ObjectError>>, ObjectError> {
        if range.is_empty() {
            return Ok(futures::stream::empty().boxed());
        }
        let path = ObjectPath::from(key);
        if !self.local {
            let options = GetOptions {
                range: Some(GetRange::Bounded(range)),
                ..GetOptions::default()
            };
            return Ok(self.store.get_opts(&path, options).await?.into_stream());
        }
        let store = self.store.clone();
        let first_end = (range.start + LOCAL_READ_BYTES).min(range.end);
        let first = store.get_range(&path, range.start..first_end).await?;
        let rest = futures::stream::try_unfold(
            (store, path, first_end, range.end),
            |(store, path, at, end)| async move {
                if at >= end {
                    return Ok(None);
                }
                let next = (at + LOCAL_READ_BYTES).min(end);
                let bytes = store.get_range(&path, at..next).await?;
                Ok(Some((bytes, (store, path, next, end))))
            },
        );
        Ok(futures::stream::once(async move { Ok(first) })
            .chain(rest)
            .boxed())
    }

    /// Copies objects `parts` (key, length) one after the other into a new object `to`
    /// and returns its size and SHA-256. Read in ranges (5 MiB requests from S3, 1 MiB
    /// blocking reads of local files) rather than object_store's stream of 8 KiB
    /// chunks, each its own blocking task locally; memory stays one range plus the
    /// writer's parts.
    pub async fn concat(
        &self,
        parts: &[(String, u64)],
        to: &str,
    ) -> Result<(u64, [u8; 32]), ObjectError> {
        let step = if self.local {
            LOCAL_READ_BYTES
        } else {
            PART_BYTES as u64
        };
        let mut writer = self.writer(to).await?;
        for (key, len) in parts {
            let mut at = 0u64;
            while at < *len {
                let end = (at + step).min(*len);
                let bytes = match self.read_range(key, at..end).await {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        writer.abort().await;
                        return Err(e);
                    }
                };
                at = end;
                if let Err(e) = writer.write(bytes).await {
                    writer.abort().await;
                    return Err(e);
                }
            }
        }
        writer.finish().await
    }

    /// Every key under `prefix` (e.g. an upload's parts).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, ObjectError> {
        let prefix = ObjectPath::from(prefix);
        let mut out = Vec::new();
        let mut stream = self.store.list(Some(&prefix));
        while let Some(meta) = stream.next().await {
            out.push(meta?.location.to_string());
        }
        Ok(out)
    }
}

/// Writes one object as it streams in, hashing and counting it. Holds at most
/// `PARTS_IN_FLIGHT` parts of `PART_BYTES`.
pub struct Writer {
    inner: WriteMultipart,
    hasher: Sha256,
    len: u64,
}

impl Writer {
    pub async fn write(&mut self, bytes: Bytes) -> Result<(), ObjectError> {
        self.inner.wait_for_capacity(PARTS_IN_FLIGHT).await?;
        self.hasher.update(&bytes);
        self.len += bytes.len() as u64;
        self.inner.put(bytes);
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Completes the object; its size and SHA-256.
    pub async fn finish(self) -> Result<(u64, [u8; 32]), ObjectError> {
        let Writer { inner, hasher, len } = self;
        inner.finish().await?;
        Ok((len, hasher.finalize().into()))
    }

    /// Drops what was written.
    pub async fn abort(self) {
        if let Err(e) = self.inner.abort().await {
            tracing::warn!(error = %e, "could not abort a media object write");
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}
