//! The pool of remote engines: the one place that decides where a build
//! runs ([`pick`]), and what is known of each engine (state, builds
//! running, done, failed and lost, the last error).
//!
//! A build goes to an engine that is up, can build its platforms and has
//! a free slot (`max_builds`), the least loaded first (running builds
//! over `max_builds`; then the one given fewer builds so far; then by
//! name). The daemon's `max_concurrent_builds` stays the ceiling above
//! it: the dispatcher starts no more jobs than that.
//!
//! Health: every engine is asked `/_ping` and `/version` on a short
//! interval ([`Pool::run_health`]); one that does not answer is down (its
//! running builds are told through their lease's `lost` token, so they
//! end at once rather than at `builder.timeout`), one that answers again
//! is up. Both are logged. A config reload ([`Pool::configure`]) adds,
//! replaces and removes engines; a removed engine takes no new build,
//! and its running builds finish on the client they started with.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use rebased_core::config::EngineConfig;
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{connect, reported_platform, Remote};

/// How long one health check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// What the pool knows of an engine's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineState {
    /// Not checked yet.
    Unknown,
    /// It answered its last check.
    Up,
    /// It did not.
    Down,
}

impl EngineState {
    /// `unknown`, `up` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

/// One engine as shown (`GET /v1/engines`, `rebased engines`, metrics).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EngineView {
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
    /// Up, down or not checked yet.
    pub state: EngineState,
    /// Builds running on it now.
    pub running: usize,
    /// Builds at once it takes.
    pub max_builds: usize,
    /// Builds it finished (pushed).
    pub done: u64,
    /// Builds that failed on it (the image's failure).
    pub failed: u64,
    /// Builds lost with it (run again elsewhere).
    pub lost: u64,
    /// The last error seen (a failed check, a failed or lost build).
    pub last_error: Option<String>,
    /// What it builds: the configured platforms, else the one it reports.
    pub platforms: Vec<String>,
    /// Its version (`/version`), once known.
    pub version: Option<String>,
}

struct Slot {
    config: EngineConfig,
    client: Result<Docker, String>,
    timeout: Duration,
    state: EngineState,
    running: usize,
    given: u64,
    done: u64,
    failed: u64,
    lost: u64,
    last_error: Option<String>,
    reported: Option<String>,
    version: Option<String>,
    /// Fired when the engine goes down: its running builds are lost.
    lost_token: CancellationToken,
}

impl Slot {
    fn new(config: &EngineConfig, timeout: Duration) -> Self {
        let client = connect(config, timeout);
        Self {
            last_error: client.as_ref().err().cloned(),
            config: config.clone(),
            client,
            timeout,
            state: EngineState::Unknown,
            running: 0,
            given: 0,
            done: 0,
            failed: 0,
            lost: 0,
            reported: None,
            version: None,
            lost_token: CancellationToken::new(),
        }
    }

    fn platforms(&self) -> Vec<String> {
        if self.config.platforms.is_empty() {
            self.reported.iter().cloned().collect()
        } else {
            self.config.platforms.clone()
        }
    }

    /// Whether it can build every one of `platforms` (none: any engine).
    fn can_build(&self, platforms: &[String]) -> bool {
        let own = self.platforms();
        platforms
            .iter()
            .all(|p| own.iter().any(|o| same_platform(o, p)))
    }

    fn view(&self) -> EngineView {
        EngineView {
            name: self.config.name.clone(),
            url: self.config.url.clone(),
            state: self.state,
            running: self.running,
            max_builds: self.config.max_builds,
            done: self.done,
            failed: self.failed,
            lost: self.lost,
            last_error: self.last_error.clone(),
            platforms: self.platforms(),
            version: self.version.clone(),
        }
    }
}

/// `linux/arm64` and `linux/arm64/v8` are one platform; otherwise equal text.
fn same_platform(a: &str, b: &str) -> bool {
    let norm = |p: &str| p.strip_suffix("/v8").unwrap_or(p).to_owned();
    a == b || norm(a) == norm(b)
}

/// What the pool's choice reads of one engine.
#[derive(Debug, Clone, Copy)]
pub struct Load<'a> {
    /// The engine's name.
    pub name: &'a str,
    /// Up, with a client, able to build the platforms asked for.
    pub eligible: bool,
    /// Builds running on it.
    pub running: usize,
    /// Builds at once it takes.
    pub max_builds: usize,
    /// Builds given to it so far.
    pub given: u64,
}

/// The engine a build goes to: an eligible one with a free slot, the
/// least loaded (running over `max_builds`), then the one given fewer
/// builds, then by name. The one place that decides.
pub fn pick<'a>(engines: impl IntoIterator<Item = Load<'a>>) -> Option<&'a str> {
    engines
        .into_iter()
        .filter(|e| e.eligible && e.running < e.max_builds)
        .min_by(|a, b| {
            // a.running / a.max < b.running / b.max, without division.
            (a.running * b.max_builds)
                .cmp(&(b.running * a.max_builds))
                .then(a.given.cmp(&b.given))
                .then(a.name.cmp(b.name))
        })
        .map(|e| e.name)
}

/// The remote engines of the config in force.
#[derive(Default)]
pub struct Pool {
    engines: Mutex<BTreeMap<String, Slot>>,
    /// A slot was freed or an engine changed state.
    changed: Notify,
    /// Check now (a reload).
    recheck: Notify,
}

/// How a build on a leased engine ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// Pushed.
    Done,
    /// Failed: the image's failure.
    Failed(String),
    /// The engine was lost: the engine is taken out until it answers again.
    Lost(String),
}

/// A slot on one engine, held for one build; freed when dropped.
pub struct Lease {
    pool: Arc<Pool>,
    remote: Remote,
    lost: CancellationToken,
    finished: bool,
}

impl Lease {
    /// The engine to build on.
    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// Fired when the engine goes down during the build.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// Records how the build ended and frees the slot.
    pub fn finish(mut self, how: Finish) {
        self.finished = true;
        let mut engines = self.pool.lock();
        if let Some(slot) = engines.get_mut(&self.remote.name) {
            slot.running = slot.running.saturating_sub(1);
            match how {
                Finish::Done => slot.done += 1,
                Finish::Failed(e) => {
                    slot.failed += 1;
                    slot.last_error = Some(e);
                }
                Finish::Lost(e) => {
                    slot.lost += 1;
                    if slot.state == EngineState::Up {
                        warn!(engine = %slot.config.name, "engine down: {e}");
                    }
                    slot.state = EngineState::Down;
                    slot.last_error = Some(e);
                    slot.lost_token.cancel();
                    slot.lost_token = CancellationToken::new();
                }
            }
        }
        drop(engines);
        self.pool.changed.notify_waiters();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Some(slot) = self.pool.lock().get_mut(&self.remote.name) {
            slot.running = slot.running.saturating_sub(1);
        }
        self.pool.changed.notify_waiters();
    }
}

/// Why no engine was leased.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoEngine {
    /// None configured can build these platforms.
    #[error("no configured engine builds {0}")]
    Platforms(String),
    /// None was up with a free slot in time.
    #[error("no engine that builds {platforms} was up with a free slot within {seconds} s (engines: {states})")]
    Waited {
        /// The platforms asked for.
        platforms: String,
        /// How long it waited.
        seconds: u64,
        /// Each engine's state.
        states: String,
    },
    /// Stopping.
    #[error("cancelled while waiting for an engine")]
    Cancelled,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Slot>> {
        self.engines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the engines of a (re)loaded config: new ones are added (not
    /// checked yet), changed ones get a new client (their counts kept),
    /// removed ones are dropped (running builds keep their lease's
    /// client). Then every engine is checked at once.
    pub fn configure(&self, engines: &[EngineConfig], timeout: Duration) {
        let mut now = self.lock();
        now.retain(|name, _| {
            let keep = engines.iter().any(|e| &e.name == name);
            if !keep {
                info!(engine = %name, "engine removed from the config");
            }
            keep
        });
        for e in engines {
            match now.get_mut(&e.name) {
                Some(slot) if slot.config == *e && slot.timeout == timeout => {}
                Some(slot) => {
                    let fresh = Slot::new(e, timeout);
                    slot.config = fresh.config;
                    slot.client = fresh.client;
                    slot.timeout = timeout;
                    slot.state = EngineState::Unknown;
                    slot.reported = None;
                }
                None => {
                    info!(engine = %e.name, url = %e.url, "engine added");
                    now.insert(e.name.clone(), Slot::new(e, timeout));
                }
            }
        }
        drop(now);
        self.recheck.notify_one();
        self.changed.notify_waiters();
    }

    /// Whether any engine is configured.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Every engine, by name.
    pub fn views(&self) -> Vec<EngineView> {
        self.lock().values().map(Slot::view).collect()
    }

    /// A slot on the engine [`pick`] chooses for `platforms`, waiting up
    /// to `wait` for one to be up and free.
    pub async fn acquire(
        self: &Arc<Self>,
        platforms: &[String],
        wait: Duration,
        cancel: &CancellationToken,
    ) -> Result<Lease, NoEngine> {
        let deadline = tokio::time::Instant::now() + wait;
        let wanted = || {
            if platforms.is_empty() {
                "any platform".to_owned()
            } else {
                platforms.join(", ")
            }
        };
        loop {
            let changed = self.changed.notified();
            {
                let mut engines = self.lock();
                // Unknown platforms (not checked yet, none configured) may
                // still turn out to match.
                let possible = engines.values().any(|s| {
                    s.can_build(platforms)
                        || (s.config.platforms.is_empty() && s.reported.is_none())
                });
                if !possible {
                    return Err(NoEngine::Platforms(wanted()));
                }
                let chosen = pick(engines.values().map(|s| Load {
                    name: &s.config.name,
                    eligible: s.state == EngineState::Up
                        && s.client.is_ok()
                        && s.can_build(platforms),
                    running: s.running,
                    max_builds: s.config.max_builds,
                    given: s.given,
                }))
                .map(str::to_owned);
                if let Some(name) = chosen {
                    if let Some(slot) = engines.get_mut(&name) {
                        if let Ok(docker) = &slot.client {
                            slot.running += 1;
                            slot.given += 1;
                            return Ok(Lease {
                                pool: Arc::clone(self),
                                remote: Remote {
                                    name,
                                    docker: docker.clone(),
                                    timeout: slot.timeout,
                                },
                                lost: slot.lost_token.clone(),
                                finished: false,
                            });
                        }
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    let states: Vec<String> = engines
                        .values()
                        .map(|s| {
                            format!(
                                "{} {} {}/{}",
                                s.config.name,
                                s.state.as_str(),
                                s.running,
                                s.config.max_builds
                            )
                        })
                        .collect();
                    return Err(NoEngine::Waited {
                        platforms: wanted(),
                        seconds: wait.as_secs(),
                        states: states.join(", "),
                    });
                }
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = cancel.cancelled() => return Err(NoEngine::Cancelled),
            }
        }
    }

    /// Checks every engine once (`/_ping`, `/version`), at once, and
    /// records and logs what changed.
    pub async fn check_all(&self) {
        let clients: Vec<(String, Result<Docker, String>)> = self
            .lock()
            .iter_mut()
            .map(|(n, s)| {
                // A client that could not be made (a socket not there yet)
                // is tried again.
                if s.client.is_err() {
                    s.client = connect(&s.config, s.timeout);
                }
                (n.clone(), s.client.clone())
            })
            .collect();
        let checks = clients.into_iter().map(|(name, client)| async move {
            let result = match client {
                Err(e) => Err(e),
                Ok(docker) => check(docker).await,
            };
            (name, result)
        });
        let results = futures_util::future::join_all(checks).await;
        let mut engines = self.lock();
        for (name, result) in results {
            let Some(slot) = engines.get_mut(&name) else {
                continue;
            };
            match result {
                Ok((platform, version)) => {
                    if slot.state != EngineState::Up {
                        info!(engine = %name, version = %version.as_deref().unwrap_or("?"), platform = %platform.as_deref().unwrap_or("?"), "engine up");
                    }
                    slot.state = EngineState::Up;
                    slot.reported = platform;
                    slot.version = version;
                }
                Err(e) => {
                    if slot.state != EngineState::Down {
                        warn!(engine = %name, "engine down: {e}");
                        slot.lost_token.cancel();
                        slot.lost_token = CancellationToken::new();
                    }
                    slot.state = EngineState::Down;
                    slot.last_error = Some(e);
                }
            }
        }
        drop(engines);
        self.changed.notify_waiters();
    }

    /// Checks every engine every `interval` (and at once after a
    /// [`Pool::configure`]) until `cancel`; `after` is given every
    /// engine after each round (the daemon's metrics).
    pub async fn run_health(
        self: Arc<Self>,
        interval: Duration,
        cancel: CancellationToken,
        after: impl Fn(Vec<EngineView>) + Send,
    ) {
        loop {
            self.check_all().await;
            after(self.views());
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.recheck.notified() => {}
                _ = cancel.cancelled() => return,
            }
        }
    }
}

/// One health check: `/_ping`, then `/version` (platform, version).
async fn check(docker: Docker) -> Result<(Option<String>, Option<String>), String> {
    let docker = docker.with_timeout(CHECK_TIMEOUT);
    let answer = tokio::time::timeout(CHECK_TIMEOUT, async {
        docker.ping().await.map_err(|e| format!("/_ping: {e}"))?;
        docker.version().await.map_err(|e| format!("/version: {e}"))
    })
    .await
    .map_err(|_| format!("no answer within {} s", CHECK_TIMEOUT.as_secs()))??;
    Ok((reported_platform(&answer), answer.version.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str, running: usize, max: usize, given: u64) -> Load<'_> {
        Load {
            name,
            eligible: true,
            running,
            max_builds: max,
            given,
        }
    }

    #[test]
    fn the_least_loaded_engine_with_a_free_slot_is_picked() {
        assert_eq!(pick([load("a", 1, 2, 5), load("b", 0, 2, 9)]), Some("b"));
        // Load is relative to max_builds: 1 of 4 is less than 1 of 2.
        assert_eq!(pick([load("a", 1, 2, 0), load("b", 1, 4, 0)]), Some("b"));
        // Equal load: the one given fewer builds, then the name.
        assert_eq!(pick([load("a", 0, 2, 3), load("b", 0, 2, 1)]), Some("b"));
        assert_eq!(pick([load("b", 0, 2, 1), load("a", 0, 2, 1)]), Some("a"));
        // Full or not eligible: never.
        assert_eq!(pick([load("a", 2, 2, 0)]), None);
        let mut down = load("a", 0, 2, 0);
        down.eligible = false;
        assert_eq!(pick([down, load("b", 1, 1, 0)]), None);
    }

    #[test]
    fn platforms_are_what_is_configured_else_what_is_reported() {
        let cfg = EngineConfig {
            name: "b1".to_owned(),
            url: "tcp://127.0.0.1:9".to_owned(),
            insecure: false,
            ca_file: None,
            cert_file: None,
            key_file: None,
            ssh_key_file: None,
            known_hosts_file: None,
            max_builds: 1,
            platforms: Vec::new(),
        };
        let mut slot = Slot::new(&cfg, Duration::from_secs(5));
        assert!(slot.can_build(&[]));
        assert!(!slot.can_build(&["linux/amd64".to_owned()]));
        slot.reported = Some("linux/arm64".to_owned());
        assert!(slot.can_build(&["linux/arm64/v8".to_owned()]));
        assert!(!slot.can_build(&["linux/amd64".to_owned()]));
        slot.config.platforms = vec!["linux/amd64".to_owned()];
        assert!(slot.can_build(&["linux/amd64".to_owned()]));
        assert!(!slot.can_build(&["linux/arm64".to_owned()]));
    }

    #[tokio::test]
    async fn an_engine_that_does_not_answer_is_down_and_takes_no_build() {
        let pool = Arc::new(Pool::default());
        let cfg = EngineConfig {
            name: "gone".to_owned(),
            url: "tcp://127.0.0.1:9".to_owned(),
            insecure: false,
            ca_file: None,
            cert_file: None,
            key_file: None,
            ssh_key_file: None,
            known_hosts_file: None,
            max_builds: 1,
            platforms: vec!["linux/amd64".to_owned()],
        };
        pool.configure(&[cfg], Duration::from_secs(5));
        assert_eq!(pool.views()[0].state, EngineState::Unknown);
        pool.check_all().await;
        let v = &pool.views()[0];
        assert_eq!(v.state, EngineState::Down);
        assert!(
            v.last_error.as_deref().is_some_and(|e| e.contains("_ping")),
            "{v:?}"
        );
        let e = pool
            .acquire(
                &["linux/amd64".to_owned()],
                Duration::from_millis(200),
                &CancellationToken::new(),
            )
            .await
            .err();
        assert!(matches!(e, Some(NoEngine::Waited { .. })), "{e:?}");
        let e = pool
            .acquire(
                &["linux/arm64".to_owned()],
                Duration::from_secs(60),
                &CancellationToken::new(),
            )
            .await
            .err();
        assert_eq!(e, Some(NoEngine::Platforms("linux/arm64".to_owned())));
        // A reload without it: gone.
        pool.configure(&[], Duration::from_secs(5));
        assert!(pool.is_empty());
    }

    #[tokio::test]
    async fn a_reload_keeps_the_counts_of_an_engine_it_keeps() {
        let pool = Arc::new(Pool::default());
        let cfg = |name: &str, max: usize| EngineConfig {
            name: name.to_owned(),
            url: "tcp://127.0.0.1:9".to_owned(),
            insecure: false,
            ca_file: None,
            cert_file: None,
            key_file: None,
            ssh_key_file: None,
            known_hosts_file: None,
            max_builds: max,
            platforms: Vec::new(),
        };
        pool.configure(&[cfg("a", 1), cfg("b", 1)], Duration::from_secs(5));
        // As if "a" had answered and built once.
        {
            let mut e = pool.lock();
            let a = e.get_mut("a").expect("a");
            a.state = EngineState::Up;
            a.done = 3;
        }
        let lease = pool
            .acquire(&[], Duration::from_secs(1), &CancellationToken::new())
            .await
            .expect("a is up");
        assert_eq!(lease.remote().name, "a");
        // Full: the next waits, then gives up.
        assert!(pool
            .acquire(&[], Duration::from_millis(100), &CancellationToken::new())
            .await
            .is_err());
        lease.finish(Finish::Done);
        pool.configure(&[cfg("a", 2)], Duration::from_secs(5));
        let views = pool.views();
        assert_eq!(views.len(), 1, "b removed");
        assert_eq!((views[0].done, views[0].max_builds), (4, 2));
        assert_eq!(
            views[0].state,
            EngineState::Unknown,
            "changed: checked again"
        );
    }
}
