//! The data directory holds the database (password hashes, the audit trail, sealed secrets),
//! the master key, the bootstrap admin's credentials, the TLS key and the audit checkpoint:
//! nothing in it is for other local users. The directory is made 0700 and every file in it
//! 0600, on creation and, for a directory an older version left readable, on every start
//! (each change is logged).

use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of the data directory and every directory in it.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file in it.
pub const FILE_MODE: u32 = 0o600;
/// How deep the start-up check descends (the data directory has one level of subdirectories).
const MAX_DEPTH: usize = 4;

/// Creates `dir` (and missing parents) with mode 0700, so it is never readable by others even
/// for an instant.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

/// Creates `path` empty with mode 0600 when it does not exist, so a program that creates it
/// later (SQLite, and its `-wal`/`-shm` files, which copy the database file's mode) does so
/// privately.
pub fn private_file(path: &Path) -> io::Result<()> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// One mode this start changed, or could not change.
#[derive(Debug)]
pub struct Tightened {
    /// The file or directory.
    pub path: PathBuf,
    /// Its mode before.
    pub was: u32,
    /// Its mode now, or why it could not be changed (not the server's file, say): the
    /// server still starts, and the log says so.
    pub now: Result<u32, io::Error>,
}

/// Makes `dir` private ([`secure`]) and logs each change and each failure to change.
pub fn secure_and_log(dir: &Path) -> io::Result<()> {
    for t in secure(dir)? {
        match &t.now {
            Ok(now) => tracing::warn!(
                "{} was mode {:o}, open to other users; made it {now:o}",
                t.path.display(),
                t.was
            ),
            Err(e) => tracing::warn!(
                "{} is mode {:o}, open to other users, and could not be made private: {e}",
                t.path.display(),
                t.was
            ),
        }
    }
    Ok(())
}

/// Makes `dir` 0700 and everything in it private (directories 0700, files 0600), returning
/// what changed. Symbolic links are left alone (their targets are not the server's to change).
pub fn secure(dir: &Path) -> io::Result<Vec<Tightened>> {
    let mut changed = Vec::new();
    secure_at(dir, 0, &mut changed)?;
    Ok(changed)
}

fn secure_at(path: &Path, depth: usize, changed: &mut Vec<Tightened>) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let was = meta.permissions().mode() & 0o7777;
    let now = if meta.is_dir() { DIR_MODE } else { FILE_MODE };
    // Only loosened modes are changed: an operator's stricter choice (0400) stays.
    if was & 0o077 != 0 || was & 0o7000 != 0 {
        let now = was & now & 0o700;
        changed.push(Tightened {
            path: path.to_path_buf(),
            was,
            now: std::fs::set_permissions(path, std::fs::Permissions::from_mode(now)).map(|()| now),
        });
    }
    // The recording store and spool hold one file per chunk (a million after a busy year):
    // their own directories are kept private above, so what is inside is unreachable by
    // others and not walked on every start.
    let bulk = depth == 1
        && path
            .file_name()
            .is_some_and(|n| n == "recordings" || n == "recording-spool");
    if meta.is_dir() && depth < MAX_DEPTH && !bulk {
        for entry in std::fs::read_dir(path)? {
            secure_at(&entry?.path(), depth + 1, changed)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn loose_modes_are_tightened_and_stricter_ones_kept() {
        let dir = std::env::temp_dir().join(format!("airlock-datadir-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("tls")).unwrap();
        for (f, m) in [("a.db", 0o644), ("tls/key.pem", 0o664), ("ro", 0o400)] {
            std::fs::write(dir.join(f), b"x").unwrap();
            std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(m)).unwrap();
        }
        std::os::unix::fs::symlink("/etc/hostname", dir.join("link")).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let changed = secure(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("tls")), 0o700);
        assert_eq!(mode(&dir.join("a.db")), 0o600);
        assert_eq!(mode(&dir.join("tls/key.pem")), 0o600);
        assert_eq!(mode(&dir.join("ro")), 0o400);
        assert_eq!(changed.len(), 4, "{changed:?}");
        assert!(changed.iter().all(|t| t.now.is_ok()), "{changed:?}");
        assert!(secure(&dir).unwrap().is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
