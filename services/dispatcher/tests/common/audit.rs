//! The audit trail as a test reads it: every line the dispatcher logs under `waybill::audit` in
//! this test binary, captured from the first call to [`capture`] on.

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
};

/// Starts capturing (once per test binary; later calls do nothing) and returns the buffer.
pub fn capture() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let writer = Arc::clone(&log);
        tracing_subscriber::fmt()
            .with_env_filter("waybill::audit=info")
            .with_ansi(false)
            .with_writer(move || Buffer(Arc::clone(&writer)))
            .init();
        log
    })
}

struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The audit lines captured so far that contain `needle`.
pub fn lines_with(needle: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&capture().lock().unwrap()).into_owned();
    text.lines()
        .filter(|line| line.contains(needle))
        .map(str::to_owned)
        .collect()
}
