//! The access log: one JSON object per request, written by its own thread so that a slow
//! disk never stalls a worker. Lines that cannot be queued (the writer is 64k lines behind)
//! are dropped and counted rather than blocking.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

/// Where access log lines go.
#[derive(Debug)]
pub(crate) struct AccessLog {
    sender: Option<SyncSender<String>>,
    dropped: Arc<AtomicU64>,
}

/// A way to write lines later, from whatever outlives the request (the end of a body).
#[derive(Debug, Clone)]
pub(crate) struct LogHandle {
    sender: SyncSender<String>,
    dropped: Arc<AtomicU64>,
}

impl LogHandle {
    /// Queues one line (which must end with `\n`).
    pub(crate) fn write(&self, line: String) {
        if let Err(TrySendError::Full(_)) = self.sender.try_send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl AccessLog {
    /// A log that writes nothing.
    pub(crate) fn disabled() -> Self {
        AccessLog {
            sender: None,
            dropped: Arc::default(),
        }
    }

    /// Starts the writer thread; `path` `-` is standard output.
    pub(crate) fn open(path: &str) -> std::io::Result<Self> {
        let mut out: Box<dyn Write + Send> = if path == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )
        };
        let (sender, receiver) = sync_channel::<String>(65_536);
        std::thread::Builder::new()
            .name("portico-access-log".into())
            .spawn(move || {
                let mut buffered = std::io::BufWriter::new(&mut out);
                while let Ok(line) = receiver.recv() {
                    let _ = buffered.write_all(line.as_bytes());
                    // Drain what is queued, then flush once.
                    while let Ok(line) = receiver.try_recv() {
                        let _ = buffered.write_all(line.as_bytes());
                    }
                    let _ = buffered.flush();
                }
            })?;
        Ok(AccessLog {
            sender: Some(sender),
            dropped: Arc::default(),
        })
    }

    /// A handle to write with later, if lines are written at all.
    pub(crate) fn handle(&self) -> Option<LogHandle> {
        self.sender.as_ref().map(|sender| LogHandle {
            sender: sender.clone(),
            dropped: Arc::clone(&self.dropped),
        })
    }

    /// Whether lines are written at all.
    pub(crate) fn enabled(&self) -> bool {
        self.sender.is_some()
    }

    /// Queues one line (which must end with `\n`).
    pub(crate) fn write(&self, line: String) {
        if let Some(sender) = &self.sender
            && let Err(TrySendError::Full(_)) = sender.try_send(line)
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
