//! A SQLite VFS that writes each commit's WAL frames with one `pwrite` where SQLite would make
//! two per frame, over the platform's own VFS (`unix`) for everything else.
//!
//! SQLite writes a WAL frame as its 24-byte header, then its page, each with its own `pwrite`:
//! about 60 system calls for a group commit of 30 pages, which measured as over half of the
//! commit's CPU in the writer's profile. Here the WAL file of each connection keeps the bytes
//! SQLite writes to it in a buffer while they are contiguous, and writes the buffer out with one
//! call before anything can depend on it being in the file:
//!
//! - right after the page of a commit frame (the frame whose header carries the database's
//!   size), before SQLite syncs the WAL or publishes the commit to other connections, so the
//!   file holds the same bytes at the same points of a commit as without the buffer;
//! - before a read of bytes it holds, before every other operation on the WAL file (sync,
//!   size, truncate, file control, close), and before a write that does not continue it;
//! - when the connection releases the WAL's write lock: the frames of a transaction that rolled
//!   back are written while it still holds the lock (where SQLite would have written them
//!   earlier), never later over frames another connection has since committed;
//! - when the buffer reaches `BUFFER_BYTES_MAX`.
//!
//! A write over bytes the transaction already wrote (SQLite rewrites a spilled frame in place,
//! and at commit rewrites the checksums of the frame headers after it, the commit frame's
//! included) is not buffered at all: it goes to the file at once. Buffered, the last rewritten
//! header would stay behind until the write lock is released, after the commit is published,
//! and a sync from another file handle in between (the writer's syncer) could acknowledge a
//! commit whose frame on disk still has the stale checksum, which recovery would then discard.
//!
//! Durability is unchanged: a commit's frames are in the file before its commit is published,
//! so the fsync that makes it durable (SQLite's with `synchronous=FULL`, or the writer's syncer
//! thread, see `sqlite.rs`) comes after the buffer is written. A process that dies with bytes in the buffer
//! loses writes of a transaction that had not committed, as if it had died before making them.

#![allow(unsafe_code)]

use rusqlite::ffi;
use std::ffi::{CStr, c_int, c_void};
use std::ptr;
use std::sync::OnceLock;

/// The VFS's registered name, for `Connection::open_with_flags_and_vfs`.
pub const NAME: &str = "wasaga-unix";
const NAME_C: &CStr = c"wasaga-unix";

/// Buffered WAL bytes after which they are written out mid-transaction (a large transaction,
/// such as a migration or a big module, writes in chunks of about this size).
const BUFFER_BYTES_MAX: usize = 4 << 20;

/// The most the unix VFS writes with one call: it masks a write's length to 17 bits, so a longer
/// buffer goes out in pieces of at most this many bytes.
const WRITE_BYTES_MAX: usize = 0x1ffff;

/// The size of a WAL frame's header; bytes 4..8 are non-zero only in a commit frame's.
const FRAME_HEADER_BYTES: usize = 24;

/// SQLite's WAL write lock: the first of the shared-memory locks.
const WAL_WRITE_LOCK: c_int = 0;

/// Registers the VFS once per process; returns its name.
pub fn register() -> Result<&'static str, String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            // SAFETY: `sqlite3_vfs_find` and `sqlite3_vfs_register` are thread-safe once SQLite
            // is initialized (find initializes it); the registered struct is leaked, so it
            // outlives every connection.
            unsafe { register_once() }
        })
        .clone()
        .map(|()| NAME)
}

unsafe fn register_once() -> Result<(), String> {
    // SAFETY: see `register`.
    let root = unsafe { ffi::sqlite3_vfs_find(ptr::null()) };
    if root.is_null() {
        return Err("SQLite has no default VFS".to_owned());
    }
    // SAFETY: a registered VFS is never freed.
    let root_vfs = unsafe { *root };
    // SAFETY: a VFS's name is a NUL-terminated string that lives as long as it.
    let root_name = unsafe { CStr::from_ptr(root_vfs.zName) };
    // The unix VFS's functions other than xOpen ignore the VFS they are called with, so they
    // are used as they are; xOpen is given the unix VFS itself.
    if root_name.to_bytes() != b"unix" {
        return Err(format!(
            "SQLite's default VFS is {root_name:?}, not \"unix\"; wasaga's WAL writer needs it"
        ));
    }
    let vfs = ffi::sqlite3_vfs {
        szOsFile: c_int::try_from(INNER_OFFSET)
            .ok()
            .and_then(|offset| offset.checked_add(root_vfs.szOsFile))
            .ok_or("SQLite's file object is too large")?,
        pNext: ptr::null_mut(),
        zName: NAME_C.as_ptr(),
        pAppData: root.cast(),
        xOpen: Some(open),
        ..root_vfs
    };
    // SAFETY: the struct is leaked, so it lives as long as SQLite may use it.
    let rc = unsafe { ffi::sqlite3_vfs_register(Box::into_raw(Box::new(vfs)), 0) };
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(format!("registering SQLite's VFS failed with code {rc}"))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Database,
    Wal,
}

/// The file object SQLite allocates for a database or WAL file of this VFS (`szOsFile` bytes);
/// the unix VFS's own file object follows it at `INNER_OFFSET`.
#[repr(C)]
struct ShimFile {
    /// SQLite's view: the methods below. Must be first.
    base: ffi::sqlite3_file,
    kind: Kind,
    /// For a database file: its connection's WAL file while that is open, to write the WAL's
    /// buffer out when the write lock is released.
    wal: *mut ShimFile,
    /// For a WAL file: its database file, to unlink itself when closed.
    database: *mut ShimFile,
    /// WAL bytes not yet written, which belong at `pending_at` in the file.
    pending: Vec<u8>,
    pending_at: i64,
    /// The last buffered write was a commit frame's header: write out after its page.
    commit_header_pending: bool,
    /// The end of the furthest byte this connection wrote to the WAL in its current write
    /// transaction: a write below it rewrites the transaction's own frames.
    wal_end: i64,
}

const INNER_OFFSET: usize = std::mem::size_of::<ShimFile>().next_multiple_of(8);

/// The unix file object behind `file`.
///
/// # Safety
/// `file` is a `ShimFile` opened by `open`.
unsafe fn inner(file: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    // SAFETY: SQLite allocated `szOsFile` bytes for `file`, the inner object included.
    unsafe { file.cast::<u8>().add(INNER_OFFSET).cast() }
}

/// The unix file's methods.
///
/// # Safety
/// `inner` is an open unix file object.
unsafe fn methods(inner: *mut ffi::sqlite3_file) -> &'static ffi::sqlite3_io_methods {
    // SAFETY: an open file's methods are a static table of the unix VFS.
    unsafe { &*(*inner).pMethods }
}

impl ShimFile {
    /// Writes the buffered bytes out with one call; the buffer is empty afterwards, whether it
    /// succeeded or not (a failed write fails the transaction that made it).
    ///
    /// # Safety
    /// `self` was opened by `open`.
    unsafe fn flush(&mut self) -> c_int {
        self.commit_header_pending = false;
        if self.pending.is_empty() {
            return ffi::SQLITE_OK;
        }
        let inner = unsafe { inner(ptr::from_mut(self).cast()) };
        let write = unsafe { methods(inner) }
            .xWrite
            .expect("the unix VFS's files have xWrite");
        let mut rc = ffi::SQLITE_OK;
        let mut at = self.pending_at;
        for piece in self.pending.chunks(WRITE_BYTES_MAX) {
            let amount = c_int::try_from(piece.len()).expect("a piece is under 128 KiB");
            // SAFETY: the piece is valid for `amount` bytes.
            rc = unsafe { write(inner, piece.as_ptr().cast(), amount, at) };
            if rc != ffi::SQLITE_OK {
                break;
            }
            at += piece.len() as i64;
        }
        self.pending.clear();
        rc
    }
}

/// Writes the WAL buffer of `file` out if it is a WAL file; `SQLITE_OK` for a database file.
///
/// # Safety
/// `file` was opened by `open`.
unsafe fn flush_wal(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: `file` is a `ShimFile`.
    let shim = unsafe { &mut *file.cast::<ShimFile>() };
    if shim.kind == Kind::Wal {
        // SAFETY: as above.
        unsafe { shim.flush() }
    } else {
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: `pAppData` is the unix VFS (`register_once`).
    let root = unsafe { (*vfs).pAppData.cast::<ffi::sqlite3_vfs>() };
    let root_open = unsafe { (*root).xOpen.expect("the unix VFS has xOpen") };
    let kind = if flags & ffi::SQLITE_OPEN_WAL != 0 {
        Kind::Wal
    } else if flags & ffi::SQLITE_OPEN_MAIN_DB != 0 {
        Kind::Database
    } else {
        // Journals and temporary files are the unix VFS's own: its file object takes the start
        // of the memory SQLite allocated (more than it needs), and SQLite calls its methods.
        // SAFETY: `file` has room for the unix file object.
        return unsafe { root_open(root, name, file, flags, out_flags) };
    };
    // SAFETY: `file` has `szOsFile` bytes: a `ShimFile`, then the unix file object.
    let inner = unsafe { inner(file) };
    let rc = unsafe { root_open(root, name, inner, flags, out_flags) };
    if rc != ffi::SQLITE_OK {
        // SQLite closes a file whose open failed only if its methods are set; ours are not, so
        // an inner file left half-open is closed here.
        unsafe {
            if !(*inner).pMethods.is_null()
                && let Some(close) = methods(inner).xClose
            {
                close(inner);
            }
            (*file).pMethods = ptr::null();
        }
        return rc;
    }
    let mut database = ptr::null_mut();
    if kind == Kind::Wal {
        // SAFETY: `name` is the WAL's name as SQLite passes it to xOpen, which is what
        // `sqlite3_database_file_object` takes.
        let candidate = unsafe { ffi::sqlite3_database_file_object(name) };
        if !candidate.is_null() && unsafe { (*candidate).pMethods } == ptr::from_ref(&METHODS) {
            database = candidate.cast::<ShimFile>();
        }
    }
    let shim = file.cast::<ShimFile>();
    // SAFETY: `file` is uninitialised memory of at least `size_of::<ShimFile>()` bytes, aligned
    // as SQLite aligns its allocations (8 bytes).
    unsafe {
        shim.write(ShimFile {
            base: ffi::sqlite3_file { pMethods: &METHODS },
            kind,
            wal: ptr::null_mut(),
            database,
            pending: Vec::new(),
            pending_at: 0,
            commit_header_pending: false,
            wal_end: 0,
        });
        if !database.is_null() {
            (*database).wal = shim;
        }
    }
    ffi::SQLITE_OK
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: Some(fetch),
    xUnfetch: Some(unfetch),
};

/// Calls the unix file's method `$method` with `$args`, or returns `$missing` if it has none.
macro_rules! forward {
    ($file:expr, $method:ident, $missing:expr $(, $arg:expr)*) => {{
        // SAFETY: `$file` was opened by `open`.
        let inner = unsafe { inner($file) };
        match unsafe { methods(inner) }.$method {
            Some(method) => unsafe { method(inner $(, $arg)*) },
            None => $missing,
        }
    }};
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    let shim = file.cast::<ShimFile>();
    // SAFETY: `file` was opened by `open`; after this call SQLite never uses it again.
    let flushed = unsafe {
        let flushed = flush_wal(file);
        match (*shim).kind {
            Kind::Wal if !(*shim).database.is_null() => (*(*shim).database).wal = ptr::null_mut(),
            Kind::Database if !(*shim).wal.is_null() => (*(*shim).wal).database = ptr::null_mut(),
            _ => {}
        }
        flushed
    };
    let closed = forward!(file, xClose, ffi::SQLITE_OK);
    // SAFETY: the shim was written by `open` and is dropped once, here.
    unsafe { ptr::drop_in_place(shim) };
    if flushed != ffi::SQLITE_OK {
        flushed
    } else {
        closed
    }
}

unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    buffer: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: `file` was opened by `open`.
    let shim = unsafe { &mut *file.cast::<ShimFile>() };
    let pending_end = shim.pending_at + shim.pending.len() as i64;
    if !shim.pending.is_empty() && offset < pending_end && shim.pending_at < offset + amount as i64
    {
        // SAFETY: as above.
        let rc = unsafe { shim.flush() };
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    forward!(file, xRead, ffi::SQLITE_IOERR_READ, buffer, amount, offset)
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: `file` was opened by `open`.
    let shim = unsafe { &mut *file.cast::<ShimFile>() };
    if shim.kind != Kind::Wal || amount <= 0 {
        return forward!(file, xWrite, ffi::SQLITE_IOERR_WRITE, data, amount, offset);
    }
    if offset < shim.wal_end {
        // A rewrite of this transaction's frames: to the file at once, after what is buffered.
        let rc = unsafe { shim.flush() };
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        return forward!(file, xWrite, ffi::SQLITE_IOERR_WRITE, data, amount, offset);
    }
    shim.wal_end = offset + i64::from(amount);
    // SAFETY: SQLite passes `amount` readable bytes at `data`.
    let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), amount as usize) };
    let end = shim.pending_at + shim.pending.len() as i64;
    if !shim.pending.is_empty() && offset != end {
        let rc = unsafe { shim.flush() };
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    if shim.pending.is_empty() {
        shim.pending_at = offset;
    }
    shim.pending.extend_from_slice(bytes);
    if shim.commit_header_pending {
        // The page of a commit frame: the commit's frames are all here.
        return unsafe { shim.flush() };
    }
    if bytes.len() == FRAME_HEADER_BYTES && bytes[4..8] != [0; 4] {
        shim.commit_header_pending = true;
    } else if shim.pending.len() >= BUFFER_BYTES_MAX {
        return unsafe { shim.flush() };
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    let rc = unsafe { flush_wal(file) };
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    forward!(file, xTruncate, ffi::SQLITE_IOERR_TRUNCATE, size)
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    let rc = unsafe { flush_wal(file) };
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    forward!(file, xSync, ffi::SQLITE_IOERR_FSYNC, flags)
}

unsafe extern "C" fn file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    let rc = unsafe { flush_wal(file) };
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    forward!(file, xFileSize, ffi::SQLITE_IOERR_FSTAT, size)
}

unsafe extern "C" fn lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    forward!(file, xLock, ffi::SQLITE_IOERR_LOCK, level)
}

unsafe extern "C" fn unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    forward!(file, xUnlock, ffi::SQLITE_IOERR_UNLOCK, level)
}

unsafe extern "C" fn check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    forward!(
        file,
        xCheckReservedLock,
        ffi::SQLITE_IOERR_CHECKRESERVEDLOCK,
        out
    )
}

unsafe extern "C" fn file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    let rc = unsafe { flush_wal(file) };
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    forward!(file, xFileControl, ffi::SQLITE_NOTFOUND, op, arg)
}

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    forward!(file, xSectorSize, 4096)
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    forward!(file, xDeviceCharacteristics, 0)
}

unsafe extern "C" fn shm_map(
    file: *mut ffi::sqlite3_file,
    region: c_int,
    region_bytes: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    forward!(
        file,
        xShmMap,
        ffi::SQLITE_IOERR_SHMMAP,
        region,
        region_bytes,
        extend,
        out
    )
}

unsafe extern "C" fn shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    // SAFETY: `file` was opened by `open`.
    let shim = unsafe { &mut *file.cast::<ShimFile>() };
    let releases_write_lock = flags & ffi::SQLITE_SHM_UNLOCK != 0
        && offset <= WAL_WRITE_LOCK
        && WAL_WRITE_LOCK < offset + n;
    if releases_write_lock && !shim.wal.is_null() {
        #[cfg(test)]
        tests::at_write_unlock();
        // A failed write here belongs to a transaction that has ended (committed frames were
        // written before their sync); the lock is released regardless.
        // SAFETY: the WAL file unlinks itself when it closes, so `wal` is open.
        unsafe {
            let _ = (*shim.wal).flush();
            (*shim.wal).wal_end = 0;
        }
    }
    forward!(file, xShmLock, ffi::SQLITE_IOERR_SHMLOCK, offset, n, flags)
}

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    forward!(file, xShmBarrier, ())
}

unsafe extern "C" fn shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    forward!(file, xShmUnmap, ffi::SQLITE_OK, delete)
}

unsafe extern "C" fn fetch(
    file: *mut ffi::sqlite3_file,
    offset: ffi::sqlite3_int64,
    amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    forward!(file, xFetch, ffi::SQLITE_OK, offset, amount, out)
}

unsafe extern "C" fn unfetch(
    file: *mut ffi::sqlite3_file,
    offset: ffi::sqlite3_int64,
    page: *mut c_void,
) -> c_int {
    forward!(file, xUnfetch, ffi::SQLITE_OK, offset, page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::tests::{Scratch, count};
    use rusqlite::{Connection, OpenFlags};
    use std::path::Path;

    /// Called as a connection releases the WAL's write lock, after its commit is published and
    /// before the buffer is written out, on the thread a test registered.
    type Hook = (std::thread::ThreadId, Box<dyn Fn() + Send>);
    static AT_WRITE_UNLOCK: std::sync::Mutex<Option<Hook>> = std::sync::Mutex::new(None);

    pub(super) fn at_write_unlock() {
        let hook = AT_WRITE_UNLOCK.lock().expect("hook lock poisoned");
        if let Some((thread, hook)) = hook.as_ref()
            && *thread == std::thread::current().id()
        {
            hook();
        }
    }

    fn open(path: &Path) -> Connection {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
        let conn = Connection::open_with_flags_and_vfs(path, flags, register().expect("register"))
            .expect("open the database through the VFS");
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
            .expect("switch to WAL");
        conn
    }

    #[test]
    fn another_connection_sees_each_commit_as_soon_as_it_returns() {
        let scratch = Scratch::new("vfs-visible");
        let path = scratch.0.join("a.db");
        let writer = open(&path);
        // Without a sync at commit, only the buffer's write-out puts the frames in the file.
        writer
            .execute_batch("PRAGMA synchronous = OFF; CREATE TABLE t (n INTEGER, pad BLOB);")
            .expect("create a table");
        // The platform's own VFS reads the file as it is.
        let reader = Connection::open(&path).expect("open a reader");
        for n in 1..=40 {
            writer
                .execute("INSERT INTO t VALUES (?1, zeroblob(3000))", [n])
                .expect("insert a row");
            assert_eq!(count(&reader), n);
        }
        let sum: i64 = reader
            .query_row("SELECT sum(n) FROM t", [], |row| row.get(0))
            .expect("sum the rows");
        assert_eq!(sum, 40 * 41 / 2);
    }

    #[test]
    fn frames_of_a_rolled_back_transaction_never_land_on_a_later_commit() {
        let scratch = Scratch::new("vfs-rollback");
        let path = scratch.0.join("a.db");
        let first = open(&path);
        first
            .execute_batch("CREATE TABLE t (n INTEGER, pad BLOB); PRAGMA cache_size = 10;")
            .expect("create a table");
        let second = open(&path);
        // A transaction larger than the first connection's cache writes frames to the WAL
        // before it ends (they stay in the buffer, no commit among them), then rolls back.
        first
            .execute_batch(
                "BEGIN;
                 WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 300)
                 INSERT INTO t SELECT n, randomblob(3000) FROM s;
                 ROLLBACK;",
            )
            .expect("write and roll back a large transaction");
        // The second connection's commit takes the WAL positions the rolled-back frames had.
        second
            .execute_batch("INSERT INTO t VALUES (1, x'01'), (2, x'02');")
            .expect("commit two rows");
        // Closing the first connection writes out whatever it still buffers; the second's
        // close then checkpoints the WAL into the database.
        drop(first);
        drop(second);
        let check = Connection::open(&path).expect("reopen the database");
        assert_eq!(count(&check), 2);
        let integrity: String = check
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .expect("check the database");
        assert_eq!(integrity, "ok");
    }

    /// A transaction larger than the cache spills frames, then changes a page it spilled: SQLite
    /// writes that frame again in place and, at commit, rewrites the checksums of the frame
    /// headers after it. The file must hold every rewritten header by the time the commit is
    /// published: a copy of the files taken then (as a sync would see them) recovers the
    /// whole transaction.
    #[test]
    fn a_commit_that_rewrote_spilled_frames_is_whole_in_the_file_once_published() {
        let scratch = Scratch::new("vfs-spill");
        let path = scratch.0.join("a.db");
        let writer = open(&path);
        writer
            .execute_batch(
                "PRAGMA synchronous = OFF; CREATE TABLE t (n INTEGER PRIMARY KEY, pad BLOB);
                 PRAGMA cache_size = 10;",
            )
            .expect("create a table");
        let copy = scratch.0.join("copy.db");
        let (from, to) = (path.clone(), copy.clone());
        *AT_WRITE_UNLOCK.lock().expect("hook lock") = Some((
            std::thread::current().id(),
            Box::new(move || {
                let wal = |p: &Path| {
                    let mut name = p.as_os_str().to_owned();
                    name.push("-wal");
                    std::path::PathBuf::from(name)
                };
                std::fs::copy(&from, &to).expect("copy the database");
                std::fs::copy(wal(&from), wal(&to)).expect("copy the WAL");
            }),
        ));
        writer
            .execute_batch(
                "BEGIN;
                 WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 300)
                 INSERT INTO t SELECT n, randomblob(3000) FROM s;
                 UPDATE t SET pad = x'00' WHERE n = 1;
                 COMMIT;",
            )
            .expect("commit a transaction that spills and rewrites");
        *AT_WRITE_UNLOCK.lock().expect("hook lock") = None;
        let check = Connection::open(&copy).expect("open the copy");
        assert_eq!(count(&check), 300, "the copy recovers the whole commit");
        let pad: Vec<u8> = check
            .query_row("SELECT pad FROM t WHERE n = 1", [], |row| row.get(0))
            .expect("the rewritten row");
        assert_eq!(pad, vec![0]);
    }
}
