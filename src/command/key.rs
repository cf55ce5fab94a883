//! `ec-launch key SOURCE`: the canonical key and lock file of a source, so an
//! operator can find the lock (and `status` output) for a URL in hand.

use std::path::Path;

use crate::cli::KeyArgs;
use crate::error::Error;
use crate::exit_code::ExitStatus;
use crate::source_key::SourceKey;

/// Prints the key and lock file path of `args.source`.
///
/// # Errors
/// When the source cannot be turned into a key.
pub fn key(args: &KeyArgs) -> Result<ExitStatus, Error> {
    crate::cli::ensure_lock_dir_given(&args.lock_dir)?;
    let key = SourceKey::from_source(&args.source).map_err(Error::SourceArg)?;
    let lock_file = key.lock_path(&args.lock_dir);
    println!("{}", render(&key, &lock_file, args.json));
    Ok(ExitStatus::Success)
}

fn render(key: &SourceKey, lock_file: &Path, json: bool) -> String {
    if json {
        serde_json::json!({ "key": key.as_str(), "lock_file": lock_file }).to_string()
    } else {
        format!("key        {key}\nlock_file  {}", lock_file.display())
    }
}
