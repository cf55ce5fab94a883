//! Reading `/proc`'s small files in the system calls they need.
//!
//! `std::fs::read_to_string` asks the file's size first (`statx`), and a
//! proc file reports 0, so std reads it in growing steps of 32, 32, 64,
//! 128, … bytes: six reads and a `statx` for a 300-byte `/proc/<pid>/stat`.
//! A busy launcher reads several such files of the holder it names, and
//! 255 of them at once when 256 contend for one source (ECP-0138). Here a
//! file is read into one buffer of a page until the end, as `cat` would,
//! with a page of room for every read: a `seq_file` such as `/proc/locks`
//! makes one snapshot per read(2), under a lock every flock(2) on the
//! machine waits for, so a read of the 45 bytes left in a page would be one
//! more of them for nothing.

use std::fs::File;
use std::io;
use std::path::Path;

/// The room offered to a read(2) that may return data: a `seq_file` hands
/// out at most its buffer, a page, per read.
const PAGE: usize = 4096;

/// The whole text of `path` (a proc file, or any small file), read in
/// page-sized steps until its end; bytes that are not UTF-8 are an
/// `InvalidData` error, as `read_to_string` has it.
///
/// # Errors
/// Opening or reading fails, or the text is not UTF-8.
pub fn read_to_string(path: &Path) -> io::Result<String> {
    let file = File::open(path)?;
    let mut bytes = Vec::with_capacity(PAGE);
    loop {
        // A small file's second read finds its end in what is left of the
        // first page; a read that nearly filled it gets a whole page more.
        if bytes.capacity() - bytes.len() < PAGE / 2 {
            bytes.reserve(PAGE);
        }
        // Into the spare capacity as it is: zeroing a page first for each
        // read was a twelfth of a launch's instructions.
        match rustix::io::read(&file, rustix::buffer::spare_capacity(&mut bytes)) {
            Ok(0) => break,
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proc_file_reads_whole_as_std_reads_it() {
        for name in ["self/stat", "self/status", "self/cgroup", "self/mountinfo"] {
            let path = Path::new("/proc").join(name);
            let ours = read_to_string(&path).unwrap();
            let std = std::fs::read_to_string(&path).unwrap();
            // The same lines (a few fields of our own process move between
            // the reads).
            assert_eq!(ours.lines().count(), std.lines().count(), "{name}");
        }
        let file = tempfile::NamedTempFile::new().unwrap();
        let long = "x".repeat(10_000);
        std::fs::write(file.path(), &long).unwrap();
        assert_eq!(read_to_string(file.path()).unwrap(), long);
        assert!(read_to_string(Path::new("/proc/self/nonexistent")).is_err());
    }
}
