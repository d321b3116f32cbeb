//! The models `serve` offers: the default one (fetched once, or the first unnamed
//! `--gguf`), every further `--gguf [NAME=]PATH`, every `*.gguf` in `--models-dir` — each
//! loaded on its first request by one fleet (`h2o_chat_engine::Fleet`) and unloaded after
//! `--keep-alive` of idleness — and the names clients use for them: their own, and the H2o
//! ids as stand-ins (`--stand-in ID=NAME`, the default model unless said).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use h2o_chat::models::MODELS as H2O_MODELS;
use h2o_chat_engine::{Engine, Fleet, FleetConfig, OnDemand};
use h2o_chat_llama::LlamaEngine;
use h2o_chat_server::{LOCAL_ALIAS, LOCAL_MODEL_ID, ModelRegistry, ServedModel};

use crate::cli::{EngineArgs, ServeArgs};
use crate::cli_error::CliError;
use crate::local;

/// How long a request waits for its model to load (a first fetch included).
const LOAD_WAIT: Duration = Duration::from_secs(300);

/// The files named on the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Files {
    /// The file that replaces the default model (no fetch).
    pub default: Option<PathBuf>,
    /// Further models, by name.
    pub named: Vec<(String, PathBuf)>,
}

/// Whether `name` may name a model: letters, digits, `.`, `_`, `-`, at most 64.
fn is_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A model's name from its file: the stem.
fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Files {
    /// `--gguf` values and `--models-dir`, checked: files exist, names are valid and once.
    pub fn of(gguf: &[String], models_dir: Option<&Path>) -> Result<Files, CliError> {
        let mut files = Files {
            default: None,
            named: Vec::new(),
        };
        for given in gguf {
            let (name, path) = match given.split_once('=') {
                Some((name, path)) if is_name(name) => {
                    (Some(name.to_string()), PathBuf::from(path))
                }
                _ => (None, PathBuf::from(given)),
            };
            if !path.is_file() {
                return Err(CliError::Model(format!(
                    "--gguf {given}: {}: no such file",
                    path.display()
                )));
            }
            match name {
                None if files.default.is_none() && files.named.is_empty() => {
                    files.default = Some(path);
                }
                None => files.named.push((stem(&path), path)),
                Some(name) => files.named.push((name, path)),
            }
        }
        if let Some(dir) = models_dir {
            let entries = std::fs::read_dir(dir)
                .map_err(|e| CliError::Usage(format!("--models-dir {}: {e}", dir.display())))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "gguf"))
                .collect();
            found.sort();
            files
                .named
                .extend(found.into_iter().map(|path| (stem(&path), path)));
        }
        let reserved: Vec<&str> = H2O_MODELS
            .iter()
            .flat_map(|m| [m.id, m.alias])
            .chain([LOCAL_MODEL_ID, LOCAL_ALIAS])
            .collect();
        for (i, (name, path)) in files.named.iter().enumerate() {
            if !is_name(name) {
                return Err(CliError::Usage(format!(
                    "{}: `{name}` is not a model name (letters, digits, `.`, `_`, `-`); give one as NAME=PATH",
                    path.display()
                )));
            }
            if reserved.contains(&name.as_str()) || files.named[..i].iter().any(|(n, _)| n == name)
            {
                return Err(CliError::Usage(format!(
                    "two models are named `{name}`; name one with --gguf NAME=PATH"
                )));
            }
        }
        Ok(files)
    }
}

/// The first unnamed `--gguf`, for the commands that run one model (`chat`, `batch`).
pub fn default_gguf(gguf: &[String]) -> Result<Option<PathBuf>, CliError> {
    Ok(Files::of(gguf, None)?.default)
}

/// What `serve` serves.
pub struct Served {
    pub registry: ModelRegistry,
    pub fleet: Arc<Fleet>,
    /// The default model, loaded at start.
    pub default: Arc<OnDemand>,
    /// The models `--preload` names, loaded at start too.
    pub preload: Vec<Arc<OnDemand>>,
}

/// Prints the engine's shape when a model loads (each time: a reload says so too).
fn announce(name: &str, engine: &LlamaEngine) {
    let config = engine.config();
    eprintln!(
        "model loaded: {name}: {} slots × {} positions, prompt cache {}, KV cache {}{}",
        config.slots,
        config.context_per_slot,
        if config.prompt_cache { "on" } else { "off" },
        config.kv_cache,
        if config.fast && !config.kv_cache.flash_attention() {
            ", fast mode: answers may depend on the batch and the prompt cache"
        } else {
            ""
        }
    );
}

/// The fleet and the names, for `serve`'s flags. `cancel` ends a fetch of the default model
/// (the first signal).
pub fn serve(
    gguf: &[String],
    quiet: bool,
    args: &ServeArgs,
    cancel: Arc<AtomicBool>,
) -> Result<Served, CliError> {
    let files = Files::of(gguf, args.models_dir.as_deref())?;
    let fleet = Fleet::new(FleetConfig {
        keep_alive: args.keep_alive.0,
        max_loaded: args.max_loaded as usize,
        wait: LOAD_WAIT,
        // By default, with several models, three quarters of what is free at start (the
        // rest is the server's own and the page cache's). One model alone has nothing to make
        // room for: a default could only refuse it, where the OS might still page it in.
        max_bytes: args.max_memory.or_else(|| {
            (!files.named.is_empty())
                .then(h2o_chat_llama::memory_available)
                .flatten()
                .map(|bytes| bytes / 4 * 3)
        }),
    });
    let knobs: EngineArgs = args.engine.clone();
    let default = {
        let (knobs, path) = (knobs.clone(), files.default.clone());
        fleet.add_sized(
            LOCAL_MODEL_ID,
            path.as_deref().map_or(0, file_size),
            Box::new(move || {
                let engine = local::load_engine(path.clone(), quiet, &knobs, &cancel)
                    .map_err(|e| e.to_string())?;
                announce(LOCAL_MODEL_ID, &engine);
                Ok(Arc::new(engine) as Arc<dyn Engine>)
            }),
        )
    };
    let mut named: Vec<(String, Arc<OnDemand>)> = Vec::new();
    for (name, path) in &files.named {
        let (knobs, path, model) = (knobs.clone(), path.clone(), name.clone());
        let engine = fleet.add_sized(
            name.clone(),
            file_size(&path),
            Box::new(move || {
                let engine = LlamaEngine::load(knobs.config(path.clone(), &model))
                    .map_err(|e| e.to_string())?;
                announce(&model, &engine);
                Ok(Arc::new(engine) as Arc<dyn Engine>)
            }),
        );
        named.push((name.clone(), engine));
    }
    let find = |name: &str| -> Option<Arc<dyn Engine>> {
        if name == LOCAL_MODEL_ID || name == LOCAL_ALIAS {
            return Some(default.clone());
        }
        named
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, e)| e.clone() as Arc<dyn Engine>)
    };
    let mut stand_ins: Vec<(String, Arc<dyn Engine>)> = Vec::new();
    for pair in &args.stand_ins {
        let (id, name) = pair
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--stand-in `{pair}`: expected ID=NAME")))?;
        let h2o = H2O_MODELS
            .iter()
            .find(|m| m.id == id || m.alias == id)
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "--stand-in `{pair}`: `{id}` is not an H2o model id"
                ))
            })?;
        let engine = find(name).ok_or_else(|| {
            CliError::Usage(format!("--stand-in `{pair}`: no model is named `{name}`"))
        })?;
        stand_ins.push((h2o.id.to_string(), engine));
    }
    let mut models: Vec<ServedModel> = H2O_MODELS
        .iter()
        .map(|m| ServedModel {
            id: m.id.to_string(),
            aliases: vec![m.alias.to_string()],
            engine: stand_ins
                .iter()
                .find(|(id, _)| id == m.id)
                .map_or_else(|| default.clone() as Arc<dyn Engine>, |(_, e)| e.clone()),
            stand_in: true,
        })
        .collect();
    models.push(ServedModel::new(
        LOCAL_MODEL_ID.to_string(),
        vec![LOCAL_ALIAS.to_string()],
        default.clone(),
    ));
    for (name, engine) in &named {
        models.push(ServedModel::new(name.clone(), Vec::new(), engine.clone()));
    }
    let mut preload = Vec::new();
    for name in &args.preload {
        if name == LOCAL_MODEL_ID || name == LOCAL_ALIAS {
            continue;
        }
        let engine = named.iter().find(|(n, _)| n == name).ok_or_else(|| {
            CliError::Usage(format!("--preload {name}: no model is named `{name}`"))
        })?;
        preload.push(engine.1.clone());
    }
    Ok(Served {
        registry: ModelRegistry::new(models),
        fleet,
        default,
        preload,
    })
}

/// A model file's size: the least it takes loaded (0 while it is still to be fetched).
fn file_size(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_named_by_flag_or_stem_and_names_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let touch = |name: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, b"GGUF").unwrap();
            path.to_string_lossy().into_owned()
        };
        let (a, b) = (touch("a.gguf"), touch("b.gguf"));
        let files = Files::of(&[a.clone(), b.clone(), format!("mine={a}")], None).unwrap();
        assert_eq!(files.default.as_deref(), Some(Path::new(&a)));
        let names: Vec<&str> = files.named.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["b", "mine"]);
        let err = Files::of(&[format!("x={a}"), format!("x={b}")], None).unwrap_err();
        assert!(
            err.to_string().contains("two models are named `x`"),
            "{err}"
        );
        let err = Files::of(&[format!("smollm2={a}")], None).unwrap_err();
        assert!(err.to_string().contains("`smollm2`"), "{err}");
        let err = Files::of(&["/no/such.gguf".into()], None).unwrap_err();
        assert!(err.to_string().contains("no such file"), "{err}");
        let listed = Files::of(&[], Some(dir.path())).unwrap();
        assert_eq!(listed.named.len(), 2);
        assert!(listed.default.is_none());
    }
}
