//! Reading secrets (private keys, page-token keys, credential files) from files, refusing a
//! file that others on the machine could read: a secret that is group- or world-readable has
//! already leaked, and starting anyway would hide that.

use std::path::{Path, PathBuf};

/// Why a secret file was not read.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Group or others may read the file.
    #[error(
        "{path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}` and restart"
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Reads a secret file after checking that only its owner can read it (on Unix; elsewhere the
/// file is read as is).
pub fn read_private_file(path: &Path) -> Result<Vec<u8>, SecretFileError> {
    let read_error = |source| SecretFileError::Read {
        path: path.to_owned(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(read_error)?;
    check_mode(path, &metadata)?;
    std::fs::read(path).map_err(read_error)
}

#[cfg(unix)]
fn check_mode(path: &Path, metadata: &std::fs::Metadata) -> Result<(), SecretFileError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_path: &Path, _metadata: &std::fs::Metadata) -> Result<(), SecretFileError> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn refuses_group_or_world_readable_files() {
        let path = std::env::temp_dir().join(format!("waybill-secret-{}", uuid::Uuid::new_v4()));
        std::fs::write(&path, b"s3cret").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let error = read_private_file(&path).expect_err("too open");
        assert!(error.to_string().contains("chmod 600"), "{error}");
        assert!(!error.to_string().contains("s3cret"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read_private_file(&path).expect("private"), b"s3cret");
        let _ = std::fs::remove_file(&path);
    }
}
