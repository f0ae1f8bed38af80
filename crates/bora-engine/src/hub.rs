//! Where a model argument points, resolved without the network: a directory, a `.gguf` file,
//! or a Hugging Face repo id (`owner/name`, optionally `@revision`) looked up in the local
//! Hugging Face cache, in the layout `huggingface_hub` writes
//! (`models--owner--name/{refs/REV, snapshots/HASH/…, blobs/…}`).

use std::path::{Path, PathBuf};

/// What a model argument resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelLocation {
    /// A checkpoint directory (config.json, safetensors, tokenizer).
    Dir(PathBuf),
    /// A GGUF file.
    Gguf(PathBuf),
}

/// A model argument that names a Hugging Face repo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoId {
    /// `owner/name`.
    pub repo: String,
    /// A branch, tag or commit hash (default `main`).
    pub revision: String,
}

/// A model that could not be found, with every place that was looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("model `{arg}` not found; looked at:\n{}", looked.iter().map(|l| format!("  - {l}")).collect::<Vec<_>>().join("\n"))]
pub struct NotFound {
    /// The argument as given.
    pub arg: String,
    /// One line per place: the path and what was missing there.
    pub looked: Vec<String>,
}

impl RepoId {
    /// `owner/name` or `owner/name@revision`, when `arg` has that shape.
    pub fn parse(arg: &str) -> Option<Self> {
        let (repo, revision) = match arg.split_once('@') {
            Some((r, rev)) if !rev.is_empty() => (r, rev),
            Some(_) => return None,
            None => (arg, "main"),
        };
        let (owner, name) = repo.split_once('/')?;
        let ok = |s: &str| {
            !s.is_empty()
                && !s.starts_with('.')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        (ok(owner) && ok(name)).then(|| Self {
            repo: repo.to_string(),
            revision: revision.to_string(),
        })
    }

    /// The repo's folder name in the cache.
    pub fn cache_folder(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }
}

/// The Hugging Face cache directories to search, in order, each with the setting that gave it:
/// `HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE` (its old name), `HF_HOME`/hub,
/// `XDG_CACHE_HOME`/huggingface/hub, then `~/.cache/huggingface/hub`.
pub fn hf_cache_dirs() -> Vec<(PathBuf, &'static str)> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let mut dirs: Vec<(PathBuf, &'static str)> = Vec::new();
    if let Some(d) = var("HF_HUB_CACHE") {
        dirs.push((d, "HF_HUB_CACHE"));
    }
    if let Some(d) = var("HUGGINGFACE_HUB_CACHE") {
        dirs.push((d, "HUGGINGFACE_HUB_CACHE"));
    }
    if let Some(d) = var("HF_HOME") {
        dirs.push((d.join("hub"), "HF_HOME"));
    }
    if let Some(d) = var("XDG_CACHE_HOME") {
        dirs.push((d.join("huggingface").join("hub"), "XDG_CACHE_HOME"));
    }
    if let Some(home) = var("HOME") {
        dirs.push((
            home.join(".cache").join("huggingface").join("hub"),
            "default",
        ));
    }
    let mut seen = Vec::new();
    dirs.retain(|(d, _)| {
        let fresh = !seen.contains(d);
        seen.push(d.clone());
        fresh
    });
    dirs
}

/// Whether `HF_HUB_OFFLINE` forbids downloads.
pub fn hf_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// Resolves a model argument without the network: an existing directory or `.gguf` file, else
/// a repo id in the caches of [`hf_cache_dirs`].
pub fn resolve_model(arg: &str) -> Result<ModelLocation, NotFound> {
    resolve_in(arg, &hf_cache_dirs())
}

/// [`resolve_model`] over the given cache directories.
pub fn resolve_in(
    arg: &str,
    caches: &[(PathBuf, &'static str)],
) -> Result<ModelLocation, NotFound> {
    let path = Path::new(arg);
    let mut looked = Vec::new();
    if path.is_dir() {
        return Ok(ModelLocation::Dir(path.to_path_buf()));
    }
    if path.is_file() {
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            return Ok(ModelLocation::Gguf(path.to_path_buf()));
        }
        looked.push(format!(
            "{}: a file, but not a .gguf file (a checkpoint is a directory)",
            path.display()
        ));
    } else {
        looked.push(format!("{}: no such file or directory", path.display()));
    }
    let Some(id) = RepoId::parse(arg) else {
        return Err(NotFound {
            arg: arg.to_string(),
            looked,
        });
    };
    for (cache, why) in caches {
        let repo = cache.join(id.cache_folder());
        match find_snapshot(&repo, &id.revision) {
            Ok(dir) => return Ok(ModelLocation::Dir(dir)),
            Err(miss) => looked.push(format!("{} ({why}): {miss}", repo.display())),
        }
    }
    if caches.is_empty() {
        looked.push("no Hugging Face cache directory (HOME and HF_HOME are unset)".into());
    }
    Err(NotFound {
        arg: arg.to_string(),
        looked,
    })
}

/// The snapshot of `revision` in a repo's cache folder, or what is missing.
fn find_snapshot(repo: &Path, revision: &str) -> Result<PathBuf, String> {
    if !repo.is_dir() {
        return Err("not in this cache".into());
    }
    let snapshots = repo.join("snapshots");
    // A commit hash names its snapshot directly; a branch or tag goes through refs/.
    let direct = snapshots.join(revision);
    let snapshot = if direct.is_dir() {
        direct
    } else {
        let reference = repo.join("refs").join(revision);
        let hash = std::fs::read_to_string(&reference)
            .map_err(|_| format!("no refs/{revision} and no snapshots/{revision}"))?;
        let hash = hash.trim();
        let dir = snapshots.join(hash);
        if !dir.is_dir() {
            return Err(format!(
                "refs/{revision} points at {hash}, but snapshots/{hash} is missing"
            ));
        }
        dir
    };
    // Files in a snapshot are links into blobs/: a broken link is a missing file.
    if snapshot.join("config.json").is_file() {
        return Ok(snapshot);
    }
    let gguf = std::fs::read_dir(&snapshot)
        .map_err(|e| format!("{}: {e}", snapshot.display()))?
        .filter_map(|e| e.ok())
        .any(|e| {
            e.path()
                .extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
        });
    if gguf {
        return Err(format!(
            "{} holds GGUF files: pass one of them as --model",
            snapshot.display()
        ));
    }
    Err(format!(
        "{} has no config.json (an incomplete download?)",
        snapshot.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache tree as huggingface_hub writes it: blobs, snapshot links, refs.
    fn fake_cache(root: &Path, repo: &str, hash: &str, files: &[&str]) -> PathBuf {
        let folder = root.join(format!("models--{}", repo.replace('/', "--")));
        let snap = folder.join("snapshots").join(hash);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(folder.join("blobs")).unwrap();
        std::fs::create_dir_all(folder.join("refs")).unwrap();
        std::fs::write(folder.join("refs").join("main"), format!("{hash}\n")).unwrap();
        for (i, f) in files.iter().enumerate() {
            let blob = folder.join("blobs").join(format!("blob{i}"));
            std::fs::write(&blob, b"{}").unwrap();
            #[cfg(unix)]
            std::os::unix::fs::symlink(format!("../../blobs/blob{i}"), snap.join(f)).unwrap();
            #[cfg(not(unix))]
            std::fs::copy(&blob, snap.join(f)).unwrap();
        }
        snap
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bora-hub-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn repo_ids_parse() {
        assert_eq!(
            RepoId::parse("mistralai/Mixtral-8x7B-Instruct-v0.1"),
            Some(RepoId {
                repo: "mistralai/Mixtral-8x7B-Instruct-v0.1".into(),
                revision: "main".into()
            })
        );
        assert_eq!(
            RepoId::parse("a/b@v1.0").map(|r| r.revision),
            Some("v1.0".into())
        );
        for bad in [
            "plain",
            "a/b/c",
            "/abs/path",
            "./x/y",
            "a/",
            "a/b@",
            "a b/c",
        ] {
            assert_eq!(RepoId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn resolves_refs_and_hashes_through_symlinks() {
        let root = tmp("refs");
        let hash = "0123456789abcdef0123456789abcdef01234567";
        let snap = fake_cache(
            &root,
            "mistralai/Mixtral-8x7B-v0.1",
            hash,
            &["config.json", "model.safetensors"],
        );
        let caches = vec![(root.clone(), "HF_HUB_CACHE")];
        assert_eq!(
            resolve_in("mistralai/Mixtral-8x7B-v0.1", &caches),
            Ok(ModelLocation::Dir(snap.clone()))
        );
        assert_eq!(
            resolve_in(&format!("mistralai/Mixtral-8x7B-v0.1@{hash}"), &caches),
            Ok(ModelLocation::Dir(snap.clone()))
        );
        // A second cache is searched when the first lacks the repo.
        let other = tmp("other");
        let caches = vec![(other.clone(), "HF_HUB_CACHE"), (root.clone(), "HF_HOME")];
        assert_eq!(
            resolve_in("mistralai/Mixtral-8x7B-v0.1", &caches),
            Ok(ModelLocation::Dir(snap))
        );
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_dir_all(&other);
    }

    #[test]
    fn errors_list_every_place_looked_at() {
        let root = tmp("miss");
        let hash = "feedfeedfeedfeedfeedfeedfeedfeedfeedfeed";
        // An incomplete download: the config link points at a missing blob.
        let snap = fake_cache(&root, "o/partial", hash, &["config.json"]);
        std::fs::remove_file(root.join("models--o--partial/blobs/blob0")).unwrap();
        let empty = tmp("empty");
        let caches = vec![(empty.clone(), "HF_HUB_CACHE"), (root.clone(), "HF_HOME")];
        let e = resolve_in("o/partial", &caches).unwrap_err();
        assert_eq!(e.looked.len(), 3, "{e}");
        assert!(e.looked[0].contains("no such file or directory"), "{e}");
        assert!(e.looked[1].contains("HF_HUB_CACHE") && e.looked[1].contains("not in this cache"));
        assert!(
            e.looked[2].contains(&snap.display().to_string())
                && e.looked[2].contains("config.json")
        );
        let e = resolve_in("o/partial@v2", &caches).unwrap_err();
        assert!(e.to_string().contains("no refs/v2"), "{e}");
        // A ref to a snapshot that is not there.
        std::fs::write(root.join("models--o--partial/refs/main"), "abc\n").unwrap();
        let e = resolve_in("o/partial", &caches).unwrap_err();
        assert!(e.to_string().contains("snapshots/abc is missing"), "{e}");
        // Not a repo id, not a path.
        let e = resolve_in("nothing-here", &caches).unwrap_err();
        assert_eq!(e.looked.len(), 1);
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_dir_all(&empty);
    }

    #[test]
    fn directories_and_gguf_files() {
        let root = tmp("paths");
        let gguf = root.join("m.Q4_0.gguf");
        std::fs::write(&gguf, b"GGUF").unwrap();
        let other = root.join("notes.txt");
        std::fs::write(&other, b"x").unwrap();
        let arg = |p: &Path| p.to_str().unwrap().to_string();
        assert_eq!(
            resolve_in(&arg(&root), &[]),
            Ok(ModelLocation::Dir(root.clone()))
        );
        assert_eq!(
            resolve_in(&arg(&gguf), &[]),
            Ok(ModelLocation::Gguf(gguf.clone()))
        );
        let e = resolve_in(&arg(&other), &[]).unwrap_err();
        assert!(e.to_string().contains("not a .gguf file"), "{e}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
