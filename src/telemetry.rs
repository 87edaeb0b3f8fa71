//! Log output: text for people, JSON for collectors; to stderr so command output stays clean.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(format: LogFormat, level: &str) {
    // RUST_LOG, when set, wins over the configured level.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let filter = cap_leaky_targets(filter);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Whatever level is configured (RUST_LOG included), these libraries log at most warnings:
/// bollard logs every request URL at debug (a build's query carries the build args, which may
/// be secrets) and request bodies at trace; hyper, under it, sees the same bytes. Directives
/// added last replace any the configuration gave for the same target.
fn cap_leaky_targets(filter: EnvFilter) -> EnvFilter {
    ["bollard=warn", "hyper=warn", "hyper_util=warn"]
        .into_iter()
        .filter_map(|d| d.parse().ok())
        .fold(filter, EnvFilter::add_directive)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut out) = self.0.lock() {
                out.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bollard_debug_is_capped_even_when_asked_for() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(cap_leaky_targets(EnvFilter::new("debug,bollard=trace")))
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "bollard::docker", "/build?buildargs=leaked");
            tracing::debug!(target: "hyper_util::client", "leaked too");
            tracing::warn!(target: "bollard::docker", "kept");
            tracing::debug!(target: "image_builder", "ours");
        });
        let out = String::from_utf8(captured.0.lock().map(|o| o.clone()).unwrap_or_default())
            .unwrap_or_default();
        assert!(!out.contains("leaked"), "{out}");
        assert!(out.contains("kept") && out.contains("ours"), "{out}");
    }
}
