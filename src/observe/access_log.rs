//! The access log: one JSON object per request, written by its own thread so that a slow
//! disk never stalls a worker. Lines that cannot be queued (the writer is 64k lines behind)
//! are dropped and counted (`portico_access_log_dropped_total`) rather than blocking. A file
//! is opened again on [`AccessLog::reopen`] (SIGUSR1), for logrotate.

use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use prometheus_client::metrics::counter::Counter;

/// Lines queued for the writer at most.
const QUEUE: usize = 65_536;

/// What the writer thread is told.
enum Message {
    Line(String),
    /// Open the file again (it was moved away by logrotate).
    Reopen,
}

/// Where access log lines go.
#[derive(Debug)]
pub(crate) struct AccessLog {
    handle: Option<LogHandle>,
}

/// A way to write lines later, from whatever outlives the request (the end of a body).
#[derive(Clone)]
pub(crate) struct LogHandle {
    sender: SyncSender<Message>,
    dropped: Counter,
}

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHandle")
            .field("dropped", &self.dropped.get())
            .finish()
    }
}

impl LogHandle {
    /// Queues one line (which must end with `\n`); counts it as dropped when the writer is
    /// too far behind.
    pub(crate) fn write(&self, line: String) {
        if let Err(TrySendError::Full(_)) = self.sender.try_send(Message::Line(line)) {
            self.dropped.inc();
        }
    }
}

/// Where the writer thread writes.
enum Sink {
    Stdout,
    File(String),
}

impl Sink {
    fn open(&self) -> std::io::Result<Box<dyn Write + Send>> {
        Ok(match self {
            Sink::Stdout => Box::new(std::io::stdout()),
            Sink::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        })
    }
}

impl AccessLog {
    /// A log that writes nothing.
    pub(crate) fn disabled() -> Self {
        AccessLog { handle: None }
    }

    /// Starts the writer thread; `path` `-` is standard output. Lines that cannot be queued
    /// are counted in `dropped`.
    pub(crate) fn open(path: &str, dropped: Counter) -> std::io::Result<Self> {
        let sink = match path {
            "-" => Sink::Stdout,
            path => Sink::File(path.to_owned()),
        };
        let out = sink.open()?;
        Self::start(sink, out, QUEUE, dropped)
    }

    fn start(
        sink: Sink,
        out: Box<dyn Write + Send>,
        queue: usize,
        dropped: Counter,
    ) -> std::io::Result<Self> {
        let (sender, receiver) = sync_channel::<Message>(queue);
        std::thread::Builder::new()
            .name("portico-access-log".into())
            .spawn(move || write_lines(&sink, out, &receiver))?;
        Ok(AccessLog {
            handle: Some(LogHandle { sender, dropped }),
        })
    }

    /// A handle to write with later, if lines are written at all.
    pub(crate) fn handle(&self) -> Option<LogHandle> {
        self.handle.clone()
    }

    /// Whether lines are written at all.
    pub(crate) fn enabled(&self) -> bool {
        self.handle.is_some()
    }

    /// Queues one line (which must end with `\n`).
    pub(crate) fn write(&self, line: String) {
        if let Some(handle) = &self.handle {
            handle.write(line);
        }
    }

    /// Has the writer open its file again once the lines queued before are written (stdout
    /// stays as it is).
    pub(crate) fn reopen(&self) {
        if let Some(handle) = &self.handle {
            // A full queue cannot take the order; the next signal can.
            if handle.sender.try_send(Message::Reopen).is_err() {
                tracing::warn!("access log: the writer is behind; reopen not queued");
            }
        }
    }
}

/// The writer thread: drains what is queued, then flushes once.
fn write_lines(sink: &Sink, out: Box<dyn Write + Send>, receiver: &Receiver<Message>) {
    let mut buffered = std::io::BufWriter::new(out);
    while let Ok(first) = receiver.recv() {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Line(line) => {
                    let _ = buffered.write_all(line.as_bytes());
                }
                Message::Reopen => {
                    let _ = buffered.flush();
                    match sink.open() {
                        Ok(out) => buffered = std::io::BufWriter::new(out),
                        Err(err) => tracing::warn!(
                            error = %err,
                            "access log: cannot open the file again; writing on to the old one"
                        ),
                    }
                }
            }
            next = receiver.try_recv().ok();
        }
        let _ = buffered.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_behind_drops_and_counts_instead_of_blocking() {
        // A writer that takes nothing: its queue of 4 fills, and the rest is counted.
        let (sender, receiver) = sync_channel::<Message>(4);
        let dropped = Counter::default();
        let handle = LogHandle {
            sender,
            dropped: dropped.clone(),
        };
        for i in 0..20 {
            handle.write(format!("line {i}\n"));
        }
        assert_eq!(dropped.get(), 16);
        assert_eq!(receiver.try_iter().count(), 4);
    }

    #[test]
    fn reopen_follows_a_moved_file() {
        let dir = std::env::temp_dir().join(format!("portico-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let moved = dir.join("access.log.1");
        let log = AccessLog::open(path.to_str().unwrap(), Counter::default()).unwrap();
        log.write("one\n".into());
        let wait = |file: &std::path::Path, want: &str| {
            let start = std::time::Instant::now();
            while std::fs::read_to_string(file).unwrap_or_default() != want {
                assert!(
                    start.elapsed().as_secs() < 10,
                    "{} never held {want:?}",
                    file.display()
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };
        wait(&path, "one\n");
        std::fs::rename(&path, &moved).unwrap();
        log.reopen();
        log.write("two\n".into());
        wait(&path, "two\n");
        wait(&moved, "one\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
