//! Push, then forget the local names; now and then, prune the layer cache.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::{
    PruneImagesOptionsBuilder, PushImageOptionsBuilder, RemoveImageOptionsBuilder,
    TagImageOptionsBuilder,
};
use futures_util::StreamExt;

use super::DockerEngine;
use super::stream::{self, PushOutput};
use crate::error::{BuildError, EngineError, cause_chain};
use crate::ports::{BuildCtx, BuildSpec};

const FORGET_WITHIN: Duration = Duration::from_secs(30);

impl DockerEngine {
    pub(super) async fn run_push(
        &self,
        docker: &Docker,
        spec: &BuildSpec,
        tag: &str,
        reference: &str,
        ctx: &BuildCtx,
    ) -> Result<String, BuildError> {
        let options = TagImageOptionsBuilder::new()
            .repo(&spec.image)
            .tag(tag)
            .build();
        docker
            .tag_image(&spec.local_ref, Some(options))
            .await
            .map_err(|e| {
                BuildError::Engine(EngineError::Docker {
                    doing: format!(
                        "failed to tag {} as {reference} on the docker daemon at {}",
                        spec.local_ref, self.host
                    ),
                    source: e,
                })
            })?;
        ctx.log.push(&format!("pushing {reference}"));
        let options = PushImageOptionsBuilder::new().tag(tag).build();
        let mut stream = docker.push_image(&spec.image, Some(options), self.credentials());
        let mut output = PushOutput::default();
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => output.on_info(&info, &ctx.log, reference)?,
                Err(DockerError::DockerStreamError { error }) => {
                    return Err(stream::push_failure(&error, &ctx.log, reference));
                }
                Err(DockerError::DockerResponseServerError { message, .. }) => {
                    return Err(stream::push_failure(&message, &ctx.log, reference));
                }
                Err(e) => return Err(self.lost(e)),
            }
        }
        output.digest(reference)
    }

    /// Removes local names; `noprune` keeps the parent layers as build cache (dockerd honours
    /// it; podman's compat service was seen to ignore it and delete the parents too).
    pub(super) async fn forget(&self, docker: &Docker, names: &[&str]) {
        for name in names {
            let options = RemoveImageOptionsBuilder::new().noprune(true).build();
            // Bounded apart from the build: a hung daemon must not hold a finished build.
            let removed = tokio::time::timeout(
                FORGET_WITHIN,
                docker.remove_image(name, Some(options), None),
            )
            .await;
            match removed {
                Ok(
                    Ok(_)
                    | Err(DockerError::DockerResponseServerError {
                        status_code: 404, ..
                    }),
                ) => {}
                Ok(Err(e)) => {
                    tracing::warn!("failed to remove the local tag {name}: {}", cause_chain(&e))
                }
                Err(_) => tracing::warn!("failed to remove the local tag {name}: timed out"),
            }
        }
    }

    /// Bounds the layer cache: dangling images unused for `layer_cache_max_age` go, at most
    /// once per `PRUNE_EVERY`, as the podman engine does.
    pub(super) fn prune_layer_cache_now_and_then(&self, docker: Docker) {
        if !self.pruning.due() {
            return;
        }
        let until = format!("{}s", self.layer_cache_max_age.as_secs());
        tokio::spawn(async move {
            let filters = HashMap::from([("until", vec![until.as_str()])]);
            let options = PruneImagesOptionsBuilder::new().filters(&filters).build();
            if let Err(e) = docker.prune_images(Some(options)).await {
                tracing::warn!("failed to prune the layer cache: {}", cause_chain(&e));
            }
        });
    }
}
