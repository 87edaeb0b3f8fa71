//! How long each stage of a build took, logged at info (target `image_builder::pipeline`):
//! where a cold build's time goes.

use std::time::Instant;

pub(super) struct Stages<'a> {
    build_id: &'a str,
    since: Instant,
}

impl<'a> Stages<'a> {
    pub(super) fn new(build_id: &'a str) -> Self {
        Self {
            build_id,
            since: Instant::now(),
        }
    }

    /// Logs the time since the previous stage ended (or since `new`) as `stage`'s.
    pub(super) fn done(&mut self, stage: &str) {
        let ms = self.since.elapsed().as_millis();
        tracing::info!(build_id = self.build_id, stage, ms, "stage done");
        self.since = Instant::now();
    }
}
