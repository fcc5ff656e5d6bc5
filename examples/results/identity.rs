//! What makes two runs the same run: the run file, the code of the training path, and the
//! bytes of every file the run reads (the model, each teacher, the data). A finished run is
//! reused only when all three are equal; a folder holding another run is never deleted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use opd_cli::RunConfig;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The name of the file holding a run's [`Identity`]: beside the run folder while it runs
/// (`runs/results/NAME.identity.json`: a run folder holds only the run's own files), in it
/// once copied to `docs/results/`.
pub const IDENTITY: &str = "identity.json";

/// A run's identity, as written to its folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The run file, as `opd train` saves it.
    pub config: String,
    /// SHA-256 of the training path's sources (every `.rs` under `crates/*/src`, burn-flex's
    /// patch, `Cargo.lock`), in path order.
    pub code: String,
    /// SHA-256 of every file the run reads, by path.
    pub files: BTreeMap<String, String>,
}

impl Identity {
    /// The identity of `config` as it would run now.
    pub fn of(config: &RunConfig) -> Self {
        let mut files = BTreeMap::new();
        let mut read = |path: &Path| {
            for file in files_under(path) {
                files.insert(file.display().to_string(), sha256_file(&file));
            }
        };
        config.model.weights.file().into_iter().for_each(&mut read);
        for teacher in config.teacher.iter().chain(&config.teachers) {
            teacher.file().into_iter().for_each(&mut read);
        }
        config.data.files().into_iter().for_each(&mut read);
        Self {
            config: toml::to_string_pretty(config).expect("a run config serializes"),
            code: code_version().to_string(),
            files,
        }
    }

    /// What differs from `other`, for a message.
    pub fn difference(&self, other: &Identity) -> String {
        let mut parts = Vec::new();
        if self.config != other.config {
            parts.push("the run file".to_string());
        }
        if self.code != other.code {
            parts.push("the training code".to_string());
        }
        for (path, hash) in self.files.iter().chain(&other.files) {
            if self.files.get(path) != Some(hash) || other.files.get(path) != Some(hash) {
                parts.push(path.clone());
            }
        }
        parts.dedup();
        parts.join(", ")
    }

    /// Reads the identity saved for run folder `dir`.
    pub fn saved(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(file_of(dir)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes the identity for run folder `dir` (atomically: a temporary file renamed).
    pub fn save(&self, dir: &Path) {
        let path = file_of(dir);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).expect("an identity serializes");
        std::fs::write(&tmp, text).expect("the run's identity");
        std::fs::rename(&tmp, path).expect("the run's identity");
    }
}

/// Where the identity of run folder `dir` is kept: `DIR.identity.json` beside it.
pub fn file_of(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map_or("run".into(), |n| n.to_string_lossy().into_owned());
    dir.with_file_name(format!("{name}.{IDENTITY}"))
}

/// SHA-256 of the training path's sources, computed once per process from the working tree.
fn code_version() -> &'static str {
    static CODE: OnceLock<String> = OnceLock::new();
    CODE.get_or_init(|| {
        let mut sources: Vec<PathBuf> = std::fs::read_dir("crates")
            .expect("run from the repository's root")
            .filter_map(|e| Some(e.ok()?.path().join("src")))
            .flat_map(|src| files_under(&src))
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .chain(files_under(Path::new("third_party/burn-flex/src")))
            .chain([PathBuf::from("Cargo.lock")])
            .collect();
        sources.sort();
        let mut hash = Sha256::new();
        for path in sources {
            hash.update(path.display().to_string().as_bytes());
            hash.update(std::fs::read(&path).unwrap_or_default());
        }
        hex(&hash.finalize())
    })
}

/// `path` itself if it is a file, else every file below it, in path order.
fn files_under(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .filter_map(|e| Some(e.ok()?.path()))
        .flat_map(|p| files_under(&p))
        .collect();
    files.sort();
    files
}

fn sha256_file(path: &Path) -> String {
    let mut hash = Sha256::new();
    let mut file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::io::copy(&mut file, &mut hash).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    hex(&hash.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
