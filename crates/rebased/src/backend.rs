//! The daemon's answers to the API, as the API's view types.

use chrono::Utc;
use rebased_api::{
    ApiError, Backend, BaseChangeView, ImageBaseView, ImageView, ReasonView, StatusView,
    VersionView,
};
use rebased_core::config::ImageConfig;
use rebased_core::ImageState;

use crate::config;
use crate::daemon::{lock, Daemon};

impl Backend for Daemon {
    fn status(&self) -> StatusView {
        let rt = lock(&self.runtime);
        StatusView {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: rt.started_at,
            uptime_seconds: (Utc::now() - rt.started_at).num_seconds(),
            config_file: self.config_file().display().to_string(),
            config_loaded_at: rt.config_loaded_at,
            config_error: rt.config_error.clone(),
            images: self.config.image.len(),
            queue_depth: rt.queue_depth,
            running: rt.running.clone(),
            last_poll: rt.last_poll,
            next_poll: rt.next_poll,
        }
    }

    fn images(&self) -> Result<Vec<ImageView>, ApiError> {
        self.config.image.iter().map(|i| self.view(i)).collect()
    }

    fn image(&self, name: &str) -> Result<Option<ImageView>, ApiError> {
        self.config
            .image
            .iter()
            .find(|i| i.name.as_str() == name)
            .map(|i| self.view(i))
            .transpose()
    }

    fn ready(&self) -> bool {
        true
    }
}

impl Daemon {
    fn view(&self, image: &ImageConfig) -> Result<ImageView, ApiError> {
        let name = image.name.as_str();
        let internal = |e: rebased_state::StateError| ApiError::internal(e.to_string());
        let record = self.store.image(name).map_err(internal)?;
        let versions = self.store.versions(name).map_err(internal)?;
        let current = record.as_ref().and_then(|r| r.current);
        let current_digest = current
            .and_then(|c| versions.iter().find(|v| v.version == c))
            .map(|v| v.digest.clone());
        let bases = match config::image_bases(image) {
            Ok(refs) => refs
                .into_iter()
                .map(|r| {
                    let key = r.to_string();
                    let rec = self.store.base(&key).ok().flatten();
                    ImageBaseView {
                        digest: r
                            .digest()
                            .cloned()
                            .or_else(|| rec.as_ref().and_then(|b| b.digest.clone())),
                        error: rec.and_then(|b| b.error),
                        reference: key,
                    }
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        Ok(ImageView {
            name: name.to_owned(),
            state: record.as_ref().map_or(ImageState::Stale, |r| r.state),
            repository: image.repository.to_string(),
            current_version: current,
            current_digest,
            bases,
            last_error: record.and_then(|r| r.last_error),
            versions: versions
                .into_iter()
                .map(|v| VersionView {
                    version: v.version,
                    digest: v.digest,
                    built_at: v.built_at,
                    trigger: v.trigger,
                    bases: v.bases,
                    superseded_by: v.superseded_by,
                    superseded_at: v.superseded_at,
                    reason: v.reason.map(|r| ReasonView {
                        trigger: r.trigger,
                        bases: r
                            .bases
                            .into_iter()
                            .map(|b| BaseChangeView {
                                reference: b.reference,
                                before: b.before,
                                after: b.after,
                            })
                            .collect(),
                    }),
                })
                .collect(),
        })
    }
}
