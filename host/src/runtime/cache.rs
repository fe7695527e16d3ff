//! The on-disk cache of compiled plugins, so that a restart does not recompile them.
//!
//! An entry is the output of `Engine::precompile_component`, stored under a name made of the
//! SHA-256 of the component's bytes and a hash of every engine setting that affects compiled
//! code, so a changed plugin or a changed engine configuration (or wasmtime version) never
//! reuses a stale artifact. Entries are written to a temporary file and renamed into place,
//! so concurrent pier processes never read half-written artifacts.

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
            // SAFETY: entries are written only by `store` below, from `precompile_component`
            // output for exactly this content hash and engine configuration, into a directory
            // only this user can write. A corrupt or foreign file fails wasmtime's own header
            // checks and is recompiled.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, true)),
                Err(err) => tracing::warn!(
                    path = %path.display(),
                    "ignoring an unusable cached plugin artifact: {err}"
                ),
            }
        }
        let compiled = engine
            .precompile_component(bytes)
            .map_err(anyhow::Error::from)?;
        if let Err(err) = self.store(&path, &compiled) {
            tracing::warn!(path = %path.display(), "could not cache a compiled plugin: {err:#}");
        }
        // SAFETY: `compiled` was produced just now by this engine.
        let component =
            unsafe { Component::deserialize(engine, &compiled) }.map_err(anyhow::Error::from)?;
        Ok((component, false))
    }

    fn store(&self, path: &Path, compiled: &[u8]) -> Result<()> {
        let tmp = self.dir.join(format!(
            ".{}.{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
            std::process::id()
        ));
        let mut file = fs::File::create(&tmp).context("create a temporary file")?;
        file.write_all(compiled).context("write the artifact")?;
        file.sync_all().ok();
        fs::rename(&tmp, path).context("move the artifact into place")?;
        Ok(())
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
