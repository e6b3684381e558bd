//! The write-behind store: the seed's "local cache flushed to a remote database".
//!
//! A write is acknowledged as soon as it is in the in-memory cache; [`Store::flush`] moves what
//! the cache holds to SQLite in one transaction. Reads see the cache first, then the database.
//! The lifecycle flushes periodically (a background task: [`crate::flusher`], which retries a
//! failed flush with a backoff and holds the process not ready until one works) and once more
//! after the last request (a FLUSH hook), then closes the database (a CLOSE hook), so a graceful
//! exit loses nothing that was acknowledged. A SIGKILL loses what was acknowledged since the
//! last flush.
//!
//! The cache is bounded in bytes (keys and values): a write that would go past the bound
//! flushes first and waits, a bounded time, for room; if there is none by then it is refused
//! ([`StoreError::Full`]: 503 with `Retry-After` over HTTP, UNAVAILABLE over gRPC), never taken
//! and dropped. Nothing acknowledged is ever dropped, a failed flush included.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

/// How long a write waits for another connection's transaction (the other process of an
/// upgrade) before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a write waits for room in a full cache before it is refused.
const ROOM_WAIT: Duration = Duration::from_secs(2);

/// The default bound of the cache, in bytes.
pub const CACHE_MAX_BYTES: usize = 64 << 20;

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The cache is full and a flush did not make room in time: the write was not taken.
    #[error(
        "the write cache is full ({held} of {max} bytes unflushed, the write needs {needs}) and \
         the database did not take it within {ROOM_WAIT:?}; retry later"
    )]
    Full {
        /// Bytes held unflushed.
        held: usize,
        /// The bound.
        max: usize,
        /// What the write needs.
        needs: usize,
    },
    /// SQLite refused.
    #[error("database {path}: {source}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The database is not open (not yet, or closed at shutdown).
    #[error("database {path} is not open")]
    Closed {
        /// The database file.
        path: PathBuf,
    },
    /// The blocking task running the operation panicked or was cancelled.
    #[error("database task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The cache and the database behind it. Shared as `Arc<Store>`.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    db: Mutex<Option<Connection>>,
    cache: Mutex<Cache>,
    /// One flush at a time: the periodic one and the final one may meet.
    flushing: tokio::sync::Mutex<()>,
    /// Whether a write is in the database before it is acknowledged.
    write_through: AtomicBool,
    /// The cache's bound in bytes.
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Cache {
    /// Acknowledged, not yet handed to a flush.
    pending: HashMap<String, String>,
    /// Handed to the flush in progress (or to a failed one, to retry); still readable.
    flushing: HashMap<String, String>,
    /// Bytes (keys and values) in `pending` and in `flushing`.
    pending_bytes: usize,
    flushing_bytes: usize,
}

impl Cache {
    fn held(&self) -> usize {
        self.pending_bytes + self.flushing_bytes
    }

    fn put(&mut self, key: String, value: String) {
        self.pending_bytes += key.len() + value.len();
        if let Some(old) = self.pending.insert(key.clone(), value) {
            self.pending_bytes -= key.len() + old.len();
        }
    }
}

fn size(key: &str, value: &str) -> usize {
    key.len() + value.len()
}

impl Store {
    /// A store on the SQLite file at `path`; nothing is opened until [`open`](Store::open).
    pub fn new(path: impl Into<PathBuf>) -> Arc<Store> {
        Self::bounded(path, CACHE_MAX_BYTES)
    }

    /// A store whose cache holds at most `max_bytes` of keys and values unflushed.
    pub fn bounded(path: impl Into<PathBuf>, max_bytes: usize) -> Arc<Store> {
        Arc::new(Store {
            path: path.into(),
            db: Mutex::new(None),
            cache: Mutex::new(Cache::default()),
            flushing: tokio::sync::Mutex::new(()),
            write_through: AtomicBool::new(false),
            max_bytes,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens (creating if missing) the database, in WAL mode.
    pub async fn open(self: &Arc<Self>) -> Result<(), StoreError> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let conn = Connection::open(&this.path).map_err(|e| this.db_error(e))?;
            conn.pragma_update(None, "journal_mode", "WAL")
                .and_then(|()| conn.pragma_update(None, "synchronous", "NORMAL"))
                // Two processes share the file for the moment of an upgrade: a writer waits
                // for the other's transaction instead of failing.
                .and_then(|()| conn.busy_timeout(BUSY_TIMEOUT))
                .and_then(|()| {
                    conn.execute_batch(
                        "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
                    )
                })
                .map_err(|e| this.db_error(e))?;
            *this.db() = Some(conn);
            Ok(())
        })
        .await?
    }

    /// Acknowledges a write: it is in the cache, and reads see it from now on.
    pub fn put(&self, key: String, value: String) {
        self.cache().put(key, value);
    }

    /// A write to acknowledge once this returns `Ok`: in the cache, and also in the database
    /// when the store writes through. A write that does not fit in the cache flushes it and
    /// waits for room, at most 2 s; then it fails with [`StoreError::Full`], taken
    /// nowhere.
    pub async fn write(self: &Arc<Self>, key: String, value: String) -> Result<(), StoreError> {
        self.admit(&key, &value).await?;
        self.put(key, value);
        if self.write_through.load(Ordering::Acquire) {
            self.flush().await?;
        }
        Ok(())
    }

    /// Waits until a write of `key` and `value` fits in the cache (an empty cache takes any).
    async fn admit(self: &Arc<Self>, key: &str, value: &str) -> Result<(), StoreError> {
        let needs = size(key, value);
        let fits = |this: &Self| {
            let held = this.cache().held();
            (held == 0 || held + needs <= this.max_bytes, held)
        };
        let until = tokio::time::Instant::now() + ROOM_WAIT;
        loop {
            let (fits, held) = fits(self);
            if fits {
                return Ok(());
            }
            if tokio::time::Instant::now() >= until {
                return Err(StoreError::Full {
                    held,
                    max: self.max_bytes,
                    needs,
                });
            }
            // Make room: a flush (one at a time; another writer's may be running). It runs on
            // a task of its own: a writer that stops waiting must not cut a flush off halfway
            // (its batch would still be written later, over newer values). A failed one keeps
            // everything; wait a little before the next try.
            let this = Arc::clone(self);
            let flush = tokio::spawn(async move { this.flush().await });
            match tokio::time::timeout_at(until, flush).await {
                Ok(Ok(Ok(_))) | Err(_) => {}
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// From now on every write is in the database before it is acknowledged (`true`), or
    /// acknowledged from the cache and flushed later (`false`, the default).
    pub fn set_write_through(&self, on: bool) {
        self.write_through.store(on, Ordering::Release);
    }

    /// Bytes (keys and values) held in the cache, unflushed.
    pub fn unflushed_bytes(&self) -> usize {
        self.cache().held()
    }

    /// Writes acknowledged but not yet in the database.
    pub fn unflushed(&self) -> usize {
        let cache = self.cache();
        cache.pending.len() + cache.flushing.len()
    }

    /// The value of `key`: from the cache, else from the database.
    pub async fn get(self: &Arc<Self>, key: &str) -> Result<Option<String>, StoreError> {
        {
            let cache = self.cache();
            if let Some(value) = cache.pending.get(key).or_else(|| cache.flushing.get(key)) {
                return Ok(Some(value.clone()));
            }
        }
        let this = Arc::clone(self);
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || {
            let db = this.db();
            let conn = db.as_ref().ok_or_else(|| this.closed())?;
            conn.query_row("SELECT value FROM kv WHERE key = ?1", [&key], |row| {
                row.get(0)
            })
            .optional()
            .map_err(|e| this.db_error(e))
        })
        .await?
    }

    /// Writes everything the cache holds to the database in one transaction; returns how many
    /// keys. On failure the writes stay in the cache (still readable) for the next flush.
    pub async fn flush(self: &Arc<Self>) -> Result<usize, StoreError> {
        let _one = self.flushing.lock().await;
        let batch: Vec<(String, String)> = {
            let mut cache = self.cache();
            let pending = std::mem::take(&mut cache.pending);
            cache.pending_bytes = 0;
            // Newer values win over those a failed flush left behind.
            for (key, value) in pending {
                cache.flushing_bytes += size(&key, &value);
                if let Some(old) = cache.flushing.insert(key.clone(), value) {
                    cache.flushing_bytes -= size(&key, &old);
                }
            }
            cache
                .flushing
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        if batch.is_empty() {
            return Ok(0);
        }
        let this = Arc::clone(self);
        let written = tokio::task::spawn_blocking(move || {
            let mut db = this.db();
            let conn = db.as_mut().ok_or_else(|| this.closed())?;
            let write = |conn: &mut Connection| -> rusqlite::Result<usize> {
                let tx = conn.transaction()?;
                {
                    let mut insert = tx.prepare_cached(
                        "INSERT INTO kv (key, value) VALUES (?1, ?2) \
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    )?;
                    for (key, value) in &batch {
                        insert.execute(params![key, value])?;
                    }
                }
                tx.commit()?;
                Ok(batch.len())
            };
            write(conn).map_err(|e| this.db_error(e))
        })
        .await??;
        // Only flushes touch `flushing`, one at a time: all of it is in the database now.
        let mut cache = self.cache();
        cache.flushing.clear();
        cache.flushing_bytes = 0;
        drop(cache);
        Ok(written)
    }

    /// Checkpoints the write-ahead log into the database file and closes it. Reads and flushes
    /// fail from then on.
    pub async fn close(self: &Arc<Self>) -> Result<(), StoreError> {
        let _no_flush = self.flushing.lock().await;
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let Some(conn) = this.db().take() else {
                return Ok(());
            };
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .map_err(|e| this.db_error(e))?;
            conn.close().map_err(|(_, e)| this.db_error(e))
        })
        .await?
    }

    fn db(&self) -> MutexGuard<'_, Option<Connection>> {
        self.db.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn db_error(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            source,
        }
    }

    fn closed(&self) -> StoreError {
        StoreError::Closed {
            path: self.path.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lameduck-demo-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("store.db");
        let _ = std::fs::remove_file(&path);
        path
    }

    #[tokio::test]
    async fn writes_are_readable_at_once_and_durable_after_flush_and_close() {
        let path = temp_db("durable");
        let store = Store::new(&path);
        store.open().await.unwrap();
        store.put("a".into(), "1".into());
        store.put("b".into(), "2".into());
        store.put("a".into(), "3".into());
        assert_eq!(store.get("a").await.unwrap().as_deref(), Some("3"));
        assert_eq!(store.unflushed(), 2);
        assert_eq!(store.flush().await.unwrap(), 2);
        assert_eq!(store.unflushed(), 0);
        assert_eq!(
            store.get("a").await.unwrap().as_deref(),
            Some("3"),
            "from the db"
        );
        store.close().await.unwrap();

        let reopened = Store::new(&path);
        reopened.open().await.unwrap();
        assert_eq!(reopened.get("b").await.unwrap().as_deref(), Some("2"));
        assert_eq!(reopened.get("zzz").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_failed_flush_keeps_the_writes_for_the_next_one() {
        let path = temp_db("retry");
        let store = Store::new(&path);
        store.put("k".into(), "old".into());
        // Not open: the flush fails, and the write stays readable and unflushed.
        assert!(matches!(
            store.flush().await,
            Err(StoreError::Closed { .. })
        ));
        assert_eq!(store.unflushed(), 1);
        store.put("k".into(), "new".into());
        assert_eq!(store.get("k").await.unwrap().as_deref(), Some("new"));
        store.open().await.unwrap();
        assert_eq!(store.flush().await.unwrap(), 1);
        assert_eq!(
            store.get("k").await.unwrap().as_deref(),
            Some("new"),
            "newest wins"
        );
    }

    #[tokio::test]
    async fn the_cache_is_bounded_a_full_one_flushes_first_and_counts_bytes_right() {
        let path = temp_db("bounded");
        let store = Store::bounded(&path, 100);
        store.open().await.unwrap();
        store.write("a".into(), "x".repeat(60)).await.unwrap();
        assert_eq!(store.unflushed_bytes(), 61);
        // A replaced value is counted once.
        store.write("a".into(), "y".repeat(50)).await.unwrap();
        assert_eq!(store.unflushed_bytes(), 51);
        // This one does not fit beside it: the cache is flushed to make room.
        store.write("b".into(), "z".repeat(60)).await.unwrap();
        assert_eq!(store.unflushed_bytes(), 61);
        assert_eq!(
            store.get("a").await.unwrap(),
            Some("y".repeat(50)),
            "from the db"
        );
        // Bigger than the bound: an empty cache still takes it.
        store.flush().await.unwrap();
        store.write("big".into(), "w".repeat(500)).await.unwrap();
        assert_eq!(store.unflushed_bytes(), 503);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_cache_whose_flush_fails_refuses_the_write_and_keeps_what_it_took() {
        let path = temp_db("full");
        // Never opened: every flush fails.
        let store = Store::bounded(&path, 100);
        store.write("a".into(), "x".repeat(90)).await.unwrap();
        let refused = store.write("b".into(), "y".repeat(20)).await.unwrap_err();
        assert!(
            matches!(
                refused,
                StoreError::Full {
                    held: 91,
                    max: 100,
                    needs: 21
                }
            ),
            "{refused}"
        );
        assert!(refused.to_string().contains("retry later"), "{refused}");
        // The acknowledged one is still there; the refused one was never taken.
        assert_eq!(store.unflushed(), 1);
        assert_eq!(store.get("b").await.ok().flatten(), None);
        store.open().await.unwrap();
        assert_eq!(store.get("a").await.unwrap(), Some("x".repeat(90)));
    }
}
