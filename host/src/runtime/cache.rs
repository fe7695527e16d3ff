//! The on-disk cache of compiled plugins, so that a restart does not recompile them.
//!
//! An entry is the output of `Engine::precompile_component`, stored under a name made of the
//! SHA-256 of the component's bytes and a hash of every engine setting that affects compiled
//! code, so a changed plugin or a changed engine configuration (or wasmtime version) never
//! reuses a stale artifact. Entries are written to a temporary file and renamed into place,
//! so concurrent pier processes never read half-written artifacts.
//!
//! Loading an artifact runs it as native code, so it is checked first: each entry ends with a
//! SHA-256 over the plugin's content hash and the compiled bytes (then a format marker), and
//! the file is read into memory, checked, and deserialized from that copy. A corrupted, truncated
//! or foreign entry is one warning and a recompile; a file changed under a running pier cannot
//! affect code already loaded.

use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use wasmtime::Engine;
use wasmtime::component::Component;

/// A directory of precompiled components for one engine configuration.
pub struct ArtifactCache {
    /// Where the artifacts live; created with owner-only permissions because what is loaded
    /// from it is executed as native code.
    dir: PathBuf,
    /// Hex digest of the engine's compatibility hash, part of every entry's name.
    engine_key: String,
}

impl ArtifactCache {
    /// Opens (creating if needed) the cache in `dir` for `engine`.
    pub fn open(dir: &Path, engine: &Engine) -> Result<Self> {
        create_private_dir(dir)
            .with_context(|| format!("cannot create the plugin cache {}", dir.display()))?;
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(ArtifactCache {
            dir: dir.to_path_buf(),
            engine_key: format!("{:016x}", hasher.finish()),
        })
    }

    /// The default location: `$PIER_CACHE_DIR`, else `$XDG_CACHE_HOME/pier`, else
    /// `$HOME/.cache/pier`.
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("PIER_CACHE_DIR") {
            return Some(PathBuf::from(dir));
        }
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
            return Some(PathBuf::from(dir).join("pier"));
        }
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache").join("pier"))
    }

    fn entry_path(&self, content_hash: &str) -> PathBuf {
        self.dir
            .join(format!("{content_hash}-{}.cwasm", self.engine_key))
    }

    /// Returns the compiled component for `bytes` (whose SHA-256 is `content_hash`), from the
    /// cache when present and valid, otherwise compiling it and storing the result. Whether it
    /// came from the cache is returned alongside.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        content_hash: &str,
        bytes: &[u8],
    ) -> Result<(Component, bool)> {
        let path = self.entry_path(content_hash);
        if path.exists() {
            match read_verified(&path, content_hash) {
                // SAFETY: the bytes are a private copy in memory (the file changing afterwards
                // cannot affect them), and their digest — over this plugin's content hash and
                // the artifact — matches the one `store` wrote next to `precompile_component`
                // output for exactly this plugin and engine configuration, in a directory only
                // this user can write. wasmtime's own header checks run as well.
                Ok(artifact) => match unsafe { Component::deserialize(engine, &artifact) } {
                    Ok(component) => return Ok((component, true)),
                    Err(err) => tracing::warn!(
                        path = %path.display(),
                        "ignoring an unusable cached plugin artifact; recompiling: {err}"
                    ),
                },
                Err(err) => tracing::warn!(
                    path = %path.display(),
                    "ignoring a cached plugin artifact that fails its check; recompiling: {err}"
                ),
            }
        }
        let compiled = engine
            .precompile_component(bytes)
            .map_err(anyhow::Error::from)?;
        if let Err(err) = self.store(&path, content_hash, &compiled) {
            tracing::warn!(path = %path.display(), "could not cache a compiled plugin: {err:#}");
        }
        // SAFETY: `compiled` was produced just now by this engine.
        let component =
            unsafe { Component::deserialize(engine, &compiled) }.map_err(anyhow::Error::from)?;
        Ok((component, false))
    }

    fn store(&self, path: &Path, content_hash: &str, compiled: &[u8]) -> Result<()> {
        let tmp = self.dir.join(format!(
            ".{}.{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
            std::process::id()
        ));
        let mut file = fs::File::create(&tmp).context("create a temporary file")?;
        file.write_all(compiled).context("write the artifact")?;
        file.write_all(&digest(content_hash, compiled))
            .context("write the artifact's digest")?;
        file.write_all(TRAILER_MAGIC)
            .context("write the artifact's digest")?;
        file.sync_all().ok();
        fs::rename(&tmp, path).context("move the artifact into place")?;
        Ok(())
    }
}

/// Ends every artifact, after its digest: marks the format, so an entry written by an older
/// pier (no digest) is recognised and recompiled rather than misread.
const TRAILER_MAGIC: &[u8; 8] = b"pier-d1\n";
/// SHA-256 length.
const DIGEST_LEN: usize = 32;

/// The digest stored after an artifact: SHA-256 over the plugin's content hash and the compiled
/// bytes, so a corrupted artifact and one saved under another plugin's name both fail the check.
fn digest(content_hash: &str, compiled: &[u8]) -> [u8; DIGEST_LEN] {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(content_hash.as_bytes());
    hasher.update([0u8]);
    hasher.update(compiled);
    hasher.finalize().into()
}

/// Why a cached artifact is not used.
#[derive(Debug, thiserror::Error)]
enum ArtifactError {
    #[error("cannot read it: {0}")]
    Read(#[from] std::io::Error),
    #[error("it has no digest (written by an older pier, or truncated)")]
    NoDigest,
    #[error("its digest does not match its contents (corrupted, or another plugin's artifact)")]
    Mismatch,
}

/// Reads an artifact into memory and checks its digest; the compiled bytes without the trailer.
/// Read rather than mapped: a file truncated or rewritten while pier runs must not be able to
/// fault the process (a mapped page that no longer exists is a SIGBUS).
fn read_verified(path: &Path, content_hash: &str) -> Result<Vec<u8>, ArtifactError> {
    let mut bytes = fs::read(path)?;
    let Some(body_len) = bytes.len().checked_sub(DIGEST_LEN + TRAILER_MAGIC.len()) else {
        return Err(ArtifactError::NoDigest);
    };
    if &bytes[body_len + DIGEST_LEN..] != TRAILER_MAGIC {
        return Err(ArtifactError::NoDigest);
    }
    let stored = &bytes[body_len..body_len + DIGEST_LEN];
    if stored != digest(content_hash, &bytes[..body_len]) {
        return Err(ArtifactError::Mismatch);
    }
    bytes.truncate(body_len);
    Ok(bytes)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
