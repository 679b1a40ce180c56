//! The config in force and what is made from it: the registry client, the
//! builders, and each Dockerfile's bases. A reload swaps them whole; every
//! part of the daemon asks here for the ones of now.
//!
//! This is the bottom layer of the binary: it reads files, never the store,
//! the queue or a registry.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Result;
use rebased_api::metrics::Metrics;
use rebased_builder::native::cache::LayerCache;
use rebased_builder::remote::pool::Pool;
use rebased_builder::{Engine, EngineKind, Native};
use rebased_core::config::{Config, CronSpec, ImageConfig, SourceConfig};
use rebased_core::source::{Context, GitContext};
use rebased_core::ImageRef;
use rebased_registry::Registry;
use rebased_sign::SigningKey;
use rebased_source::Sources;
use tracing::warn;

use crate::config;

/// Locks `m`; a poisoned lock only means a panic elsewhere, and the data
/// is still usable.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The config in force, shared by every task.
pub struct Live {
    config_file: PathBuf,
    /// One lock over both: a reader never pairs one config with another's
    /// registry client.
    in_force: RwLock<InForce>,
    plans: Mutex<PlanCache>,
    /// Each git source's work tree of its settled commit (by
    /// [`GitContext::key`]), or why there is none: set by the poll loop,
    /// read for the images' bases.
    trees: Mutex<BTreeMap<String, std::result::Result<PathBuf, String>>>,
    /// `rebased once`: no settle delay.
    once: bool,
    /// Where the registry clients count their requests.
    metrics: Arc<Metrics>,
    /// The remote build engines of the config in force.
    pool: Arc<Pool>,
}

/// A config and the registry client made from it.
struct InForce {
    config: Arc<Config>,
    registry: Arc<Registry>,
    /// The `[signing]` key (never written anywhere), or why it cannot be
    /// read; `Ok(None)` when versions are not signed.
    signer: std::result::Result<Option<Arc<SigningKey>>, String>,
}

/// The `[signing]` key of `cfg` (the config was checked with it: an error
/// here means the files changed since).
fn load_signer(cfg: &Config) -> std::result::Result<Option<Arc<SigningKey>>, String> {
    config::signer(cfg)
        .map(|k| k.map(Arc::new))
        .map_err(|e| format!("{e:#}"))
}

/// One image's Dockerfile as read now (for a build: always read afresh).
pub struct Plan {
    /// The text as read.
    pub text: String,
    /// The model (for the first platform built).
    pub model: rebased_core::dockerfile::Dockerfile,
    /// The model for each platform built (a platform `ARG` in a `FROM`
    /// gives each its own bases).
    pub per_platform: Vec<(String, rebased_core::dockerfile::Dockerfile)>,
    /// Its external bases: every platform's.
    pub bases: Vec<ImageRef>,
}

/// Counts every registry request in `rebased_registry_requests_total`.
struct Counted(Arc<Metrics>);

impl rebased_registry::Observer for Counted {
    fn request(
        &self,
        registry: &str,
        kind: rebased_registry::RequestKind,
        outcome: rebased_registry::RequestOutcome,
    ) {
        self.0.inc(
            "rebased_registry_requests_total",
            &[
                ("registry", registry),
                ("kind", kind.as_str()),
                ("outcome", outcome.as_str()),
            ],
        );
    }
}

impl Live {
    /// The config `cfg` read from `config_file`; the registry clients
    /// made from it count their requests in `metrics`.
    pub fn new(config_file: PathBuf, cfg: Config, once: bool, metrics: Arc<Metrics>) -> Self {
        let registry =
            Registry::new(&cfg.registries).observed_by(Arc::new(Counted(Arc::clone(&metrics))));
        let pool = Arc::new(Pool::default());
        pool.configure(&cfg.builder.engines, cfg.builder.timeout.0);
        Self {
            pool,
            metrics,
            config_file,
            in_force: RwLock::new(InForce {
                signer: load_signer(&cfg),
                registry: Arc::new(registry),
                config: Arc::new(cfg),
            }),
            plans: Mutex::new(PlanCache::default()),
            trees: Mutex::new(BTreeMap::new()),
            once,
        }
    }

    /// The config file.
    pub fn config_file(&self) -> &Path {
        &self.config_file
    }

    /// The config in force.
    pub fn cfg(&self) -> Arc<Config> {
        Arc::clone(&self.read().config)
    }

    /// The registry client of the config in force.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.read().registry)
    }

    /// The config in force and its registry client, read together (two
    /// calls of [`Live::cfg`] and [`Live::registry`] may straddle a reload).
    pub fn in_force(&self) -> (Arc<Config>, Arc<Registry>) {
        let now = self.read();
        (Arc::clone(&now.config), Arc::clone(&now.registry))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, InForce> {
        self.in_force.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The settle time in force (none in `once` mode).
    pub fn settle(&self) -> std::time::Duration {
        if self.once {
            std::time::Duration::ZERO
        } else {
            self.cfg().daemon.settle.0
        }
    }

    /// The image called `name`.
    pub fn image(&self, name: &str) -> Option<ImageConfig> {
        self.cfg()
            .image
            .iter()
            .find(|i| i.name.as_str() == name)
            .cloned()
    }

    /// Swaps in a new config (and what is made from it).
    pub fn install(&self, cfg: Config) {
        let mut now = self.in_force.write().unwrap_or_else(|p| p.into_inner());
        // The registry client keeps its token cache and concurrency pools
        // unless the registry settings changed.
        if cfg.registries != now.config.registries {
            now.registry = Arc::new(
                Registry::new(&cfg.registries)
                    .observed_by(Arc::new(Counted(Arc::clone(&self.metrics)))),
            );
        }
        now.signer = load_signer(&cfg);
        // Engines come and go with the config; running builds keep theirs.
        self.pool
            .configure(&cfg.builder.engines, cfg.builder.timeout.0);
        now.config = Arc::new(cfg);
        drop(now);
        *lock(&self.plans) = PlanCache::default();
    }

    /// The signing key in force: `Ok(None)` when versions are not signed,
    /// an error when `[signing]` names a key that cannot be read now.
    pub fn signer(&self) -> std::result::Result<Option<Arc<SigningKey>>, String> {
        self.read().signer.clone()
    }

    /// An engine of the config in force, with its storage in the state
    /// directory.
    pub fn engine(&self, kind: EngineKind) -> Engine {
        let cfg = self.cfg();
        Engine::with_storage(
            kind,
            &cfg.daemon.state_dir.join("containers"),
            cfg.builder.timeout.0,
        )
    }

    /// The daemon's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// The remote build engines of the config in force.
    pub fn pool(&self) -> Arc<Pool> {
        Arc::clone(&self.pool)
    }

    /// The native builder of the config in force.
    pub fn native(&self) -> Native {
        let cfg = self.cfg();
        Native {
            timeout: cfg.builder.timeout.0,
            layer_cache: Some(LayerCache::new(cfg.daemon.state_dir.join("layers"))),
        }
    }

    /// True when `base` is the repository of a managed image.
    pub fn is_managed(&self, base: &ImageRef) -> bool {
        let name = base.name();
        self.cfg()
            .image
            .iter()
            .any(|i| i.repository.to_string() == name)
    }

    /// Registries reached over plain http.
    pub fn insecure_registries(&self) -> Vec<String> {
        self.cfg()
            .registries
            .iter()
            .filter(|(_, r)| r.insecure)
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// The path of a job's build log.
    pub fn log_path(&self, job: u64) -> PathBuf {
        self.cfg()
            .daemon
            .state_dir
            .join("logs")
            .join(format!("{job}.log"))
    }

    /// Saves a build log under `state_dir/logs`.
    pub fn save_log(&self, job: u64, log: &str) {
        let path = self.log_path(job);
        let written = match path.parent() {
            Some(dir) => std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, log)),
            None => std::fs::write(&path, log),
        };
        if let Err(e) = written {
            warn!(path = %path.display(), "cannot save build log: {e}");
        }
    }

    /// The git side of sources, kept under `state_dir/sources`.
    pub fn sources(&self) -> Sources {
        Sources::new(self.cfg().daemon.state_dir.join("sources"), GIT_TIMEOUT)
    }

    /// The credentials configured for a git context's host, if any.
    pub fn source_credentials(&self, git: &GitContext) -> Option<SourceConfig> {
        let cfg = self.cfg();
        git.host().and_then(|h| cfg.sources.get(h).cloned())
    }

    /// Each git source (repository and ref) of the config: the context
    /// (of its first image), the schedules of the images using it and
    /// their names.
    pub fn git_sources(&self) -> BTreeMap<String, GitSource> {
        let cfg = self.cfg();
        let mut out: BTreeMap<String, GitSource> = BTreeMap::new();
        for image in &cfg.image {
            let Some(git) = image.context.git() else {
                continue;
            };
            let spec = image.poll.as_ref().unwrap_or(&cfg.daemon.poll);
            let s = out.entry(git.key()).or_insert_with(|| GitSource {
                git: git.clone(),
                specs: Vec::new(),
                images: Vec::new(),
            });
            if !s.specs.contains(spec) {
                s.specs.push(spec.clone());
            }
            s.images.push(image.name.to_string());
        }
        out
    }

    /// Records the work tree of source `key`'s settled commit (or why there
    /// is none).
    pub fn set_tree(&self, key: &str, tree: std::result::Result<PathBuf, String>) {
        lock(&self.trees).insert(key.to_owned(), tree);
    }

    /// The Dockerfile of `image` now: under its local context, or in the
    /// work tree of its source's settled commit.
    pub fn dockerfile_path(&self, image: &ImageConfig) -> Result<PathBuf> {
        match &image.context {
            Context::Local(_) => config::dockerfile_path(image),
            Context::Git(git) => match lock(&self.trees).get(&git.key()) {
                Some(Ok(tree)) => Ok(tree.join(&git.dir).join(&image.dockerfile)),
                Some(Err(e)) => Err(anyhow::anyhow!("{e}")),
                None => Err(anyhow::anyhow!(
                    "source {} not checked out yet",
                    git.public_url()
                )),
            },
        }
    }

    /// Reads and parses the Dockerfile of `image` in the context directory
    /// `dir` (a checkout of the decided commit).
    pub fn plan_in(&self, image: &ImageConfig, dir: &Path) -> Result<Plan> {
        let p = config::read_dockerfile_for(
            &dir.join(&image.dockerfile),
            &image.build_args,
            &image.platforms,
        )?;
        let bases = p.bases();
        Ok(Plan {
            text: p.text,
            model: p.model,
            per_platform: p.per_platform,
            bases,
        })
    }

    /// Reads `image`'s Dockerfile at `path` (its [`Live::dockerfile_path`])
    /// for its platforms; for a local context, a context directory that
    /// does not exist is said to be that.
    fn read_dockerfile(
        &self,
        image: &ImageConfig,
        path: &Path,
    ) -> Result<config::ParsedDockerfile> {
        if image.context.local().is_some() {
            return config::read_image_dockerfile(image);
        }
        config::read_dockerfile_for(path, &image.build_args, &image.platforms)
    }

    /// Reads and parses an image's Dockerfile now.
    pub fn plan(&self, image: &ImageConfig) -> Result<Plan> {
        let p = self.read_dockerfile(image, &self.dockerfile_path(image)?)?;
        let bases = p.bases();
        Ok(Plan {
            text: p.text,
            model: p.model,
            per_platform: p.per_platform,
            bases,
        })
    }

    /// An image's bases (`FROM`s and `COPY --from`s of external images):
    /// from the cache while its Dockerfile is unchanged (same inode, size,
    /// mtime and ctime; looked at once per [`PLAN_VERIFY_EVERY`]), else read
    /// and parsed now. Errors are not cached.
    pub fn image_bases(&self, image: &ImageConfig) -> Result<Arc<[ImageRef]>> {
        let path = self.dockerfile_path(image)?;
        let key = plan_key(&path, image);
        if let Some(c) = lock(&self.plans).entries.get(&key) {
            if c.verified.elapsed() < PLAN_VERIFY_EVERY {
                return Ok(Arc::clone(&c.bases));
            }
        }
        let stamp = FileStamp::of(&path);
        if let Some(stamp) = stamp {
            if let Some(c) = lock(&self.plans).entries.get_mut(&key) {
                if c.stamp == stamp {
                    c.verified = std::time::Instant::now();
                    return Ok(Arc::clone(&c.bases));
                }
            }
        }
        let p = self.read_dockerfile(image, &path)?;
        let bases = p.bases();
        let mut cache = lock(&self.plans);
        let bases = match cache.interned.get(bases.as_slice()) {
            Some(shared) => Arc::clone(shared),
            None => {
                let shared: Arc<[ImageRef]> = bases.into();
                cache.interned.insert(Arc::clone(&shared));
                shared
            }
        };
        // Stamped before the read: a write during the read is seen next time.
        if let Some(stamp) = stamp {
            cache.entries.insert(
                key,
                CachedBases {
                    stamp,
                    verified: std::time::Instant::now(),
                    bases: Arc::clone(&bases),
                },
            );
        }
        Ok(bases)
    }

    /// Each polled base (external, not pinned by digest) and the schedules
    /// of the images using it.
    pub fn schedules(&self) -> BTreeMap<ImageRef, Vec<CronSpec>> {
        self.schedules_and_unreadable().0
    }

    /// [`Live::schedules`], and the names of the images whose bases cannot
    /// be read now (their Dockerfile missing or bad).
    pub fn schedules_and_unreadable(
        &self,
    ) -> (BTreeMap<ImageRef, Vec<CronSpec>>, BTreeSet<String>) {
        let cfg = self.cfg();
        let mut out: BTreeMap<ImageRef, Vec<CronSpec>> = BTreeMap::new();
        let mut unreadable = BTreeSet::new();
        for image in &cfg.image {
            let Ok(bases) = self.image_bases(image) else {
                unreadable.insert(image.name.as_str().to_owned());
                continue;
            };
            let spec = image.poll.as_ref().unwrap_or(&cfg.daemon.poll);
            for base in bases.iter().filter(|b| b.digest().is_none()) {
                let specs = out.entry(base.clone()).or_default();
                if !specs.contains(spec) {
                    specs.push(spec.clone());
                }
            }
        }
        (out, unreadable)
    }

    /// Every polled base reference.
    pub fn watched(&self) -> BTreeSet<ImageRef> {
        self.schedules().into_keys().collect()
    }
}

/// How long one git command may run (a look-up, a fetch, a checkout)
/// before it is killed.
pub const GIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// One git source of the config.
#[derive(Debug, Clone)]
pub struct GitSource {
    /// The context of its first image (the repository and ref are the
    /// source's; the directory that image's).
    pub git: GitContext,
    /// The schedules of the images using it.
    pub specs: Vec<CronSpec>,
    /// The images using it.
    pub images: Vec<String>,
}

/// The cache key of `image`'s Dockerfile at `path`: the path's bytes, the
/// number of build args, each arg's name and value, then each platform,
/// every part length-prefixed (no two inputs share a key). Made for every
/// image at every poll round: bytes copied into one buffer, no formatting.
fn plan_key(path: &Path, image: &ImageConfig) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    fn part(key: &mut Vec<u8>, bytes: &[u8]) {
        key.extend_from_slice(&u64::try_from(bytes.len()).unwrap_or(u64::MAX).to_le_bytes());
        key.extend_from_slice(bytes);
    }
    let path = path.as_os_str().as_bytes();
    let mut key = Vec::with_capacity(path.len() + 32);
    part(&mut key, path);
    // How many args: where they end and the platforms begin.
    key.extend_from_slice(
        &u64::try_from(image.build_args.len())
            .unwrap_or(u64::MAX)
            .to_le_bytes(),
    );
    for (k, v) in &image.build_args {
        part(&mut key, k.as_bytes());
        part(&mut key, v.as_bytes());
    }
    for p in &image.platforms {
        part(&mut key, p.as_bytes());
    }
    key
}

/// The bases of each Dockerfile, by its path and the build args it is read
/// with (so an entry made under an old config during a reload can only
/// ever serve that old input; a reload empties the cache to free it), each
/// with the file's identity (inode, size, mtime, ctime) when it was read: a
/// poll cycle, a webhook and `GET /v1/images` look at every image's bases,
/// and re-reading and re-parsing thousands of unchanged files each time was
/// most of their cost. A changed file is read again. Equal base lists are
/// shared (`interned`): thousands of images usually have a few dozen
/// distinct bases.
#[derive(Default)]
struct PlanCache {
    entries: std::collections::HashMap<Vec<u8>, CachedBases>,
    interned: std::collections::HashSet<Arc<[ImageRef]>>,
}

/// One Dockerfile's bases, the file's stamp, and when the stamp was last
/// compared with the file.
struct CachedBases {
    stamp: FileStamp,
    verified: std::time::Instant,
    bases: Arc<[ImageRef]>,
}

/// A cached entry younger than this is used without looking at the file:
/// one poll round (its schedule, then its decisions) or one API request
/// looks at each file once, not several times.
pub(crate) const PLAN_VERIFY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What tells a file changed without reading it.
#[derive(Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    ino: u64,
    dev: u64,
    len: u64,
    mtime: Option<std::time::SystemTime>,
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            ino: m.ino(),
            dev: m.dev(),
            len: m.len(),
            mtime: m.modified().ok(),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config whose only registry logs in as `user`.
    fn config(user: &str, password_file: &Path) -> Config {
        Config::parse(&format!(
            "[registries.\"r.io\"]\nusername = \"{user}\"\npassword_file = \"{}\"\n",
            password_file.display()
        ))
        .expect("valid")
    }

    /// A reload swaps the registry client with the config when the
    /// registry settings changed, and keeps it (its token cache, its
    /// pools) when they did not; [`Live::in_force`] answers the pair.
    #[test]
    fn install_swaps_the_registry_client_with_its_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "secret").expect("password file");
        let user = |live: &Live| {
            let (cfg, registry) = live.in_force();
            let in_client = registry
                .credentials("r.io")
                .expect("credentials")
                .map(|c| c.username);
            assert_eq!(cfg.registries["r.io"].username, in_client);
            in_client
        };
        let live = Live::new(
            dir.path().join("rebased.toml"),
            config("a", &pw),
            false,
            Arc::new(Metrics::default()),
        );
        let first = live.registry();
        assert_eq!(user(&live).as_deref(), Some("a"));
        live.install(config("a", &pw));
        assert!(Arc::ptr_eq(&first, &live.registry()), "same settings: kept");
        live.install(config("b", &pw));
        assert!(
            !Arc::ptr_eq(&first, &live.registry()),
            "new settings: new client"
        );
        assert_eq!(user(&live).as_deref(), Some("b"));
    }
}
