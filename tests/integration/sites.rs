//! One entity served from two sites — a primary and a standby — against one IAM that revokes the old
//! secret the moment it issues a new one, each site with its own store and its own door to the IAM
//! (the simulator's sites). The chart's topology first: a `rotate` Job per site writing the site's
//! Kubernetes Secret (a stand-in API server each), a kubelet copying the Secret into the volume file the
//! site's sidecar reads, and sidecars without admin credentials answering token requests throughout. Then
//! the same with `serve` itself rotating a file store at each site.
//!
//! What must hold: started at the same moment, a primary and a standby make exactly one reset; the
//! standby converges within one run; a store restored from an old backup converges without a reset; a
//! standby resets only when fewer than its threshold of days remain; and no token request fails.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::kube::*;
use crate::common::process::*;
use crate::common::*;
use aa_token_broker::entity::{SecretSource, fingerprint};
use aa_token_broker::iam::Endpoint;
use aa_token_broker::secret::policy::DEFAULT_MIN_RESET_INTERVAL;
use aa_token_broker::secret::policy::sites::DEFAULT_STANDBY_RESET_WITHIN;
use aa_token_broker::secret::{AdminCredentials, Role, RotationSettings};
use secrecy::SecretString;

const ADMIN: &str = "ops@fiu.example";
const PASSWORD: &str = "admin-password-never-logged";
const DAY: i64 = 86_400;
/// Entity tokens live 8 s: a sidecar refreshes about 5 s after minting and may hand a token out until
/// 6.5 s, so over the test every sidecar refreshes from its store on its own too, and a store left holding
/// a revoked secret for more than a second or two would make requests fail.
const TOKEN_LIFETIME: u64 = 8;
/// Between rotation cycles, time for the sidecars to refresh on their own.
const BETWEEN_CYCLES: Duration = Duration::from_secs(2);

/// The simulator: revoke-immediately resets (its default), short tokens, a secret 10 days from expiry —
/// due for a primary (15 days), not for a standby (3 days).
async fn iam_for_two_sites() -> Iam {
    let iam = Iam::start(TOKEN_LIFETIME).await;
    assert_eq!(
        iam.sim.settings().reset_mode,
        aa_token_broker::simulator::ResetMode::RevokeImmediately
    );
    iam.sim
        .add_entity(ENTITY, SECRET, Duration::from_secs(10 * DAY as u64));
    iam.sim.add_user(ADMIN, PASSWORD, &[ENTITY]);
    iam.sim
        .update_settings(|s| s.cap_secret_by_user_token = false);
    iam
}

/// Requests `GET /v1/token` from a sidecar every few milliseconds until stopped, counting the answers.
struct Load {
    served: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(broker: &TestBroker) -> Load {
        let (client, url) = (broker.client().clone(), broker.url("/v1/token"));
        let served = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, f, halt) = (Arc::clone(&served), Arc::clone(&failed), Arc::clone(&stop));
        let task = tokio::spawn(async move {
            while !halt.load(Ordering::Relaxed) {
                match client.get(&url).guarded().send().await {
                    Ok(r) if r.status() == 200 => {
                        s.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        let line =
                            format!("{}: {}", r.status(), r.text().await.unwrap_or_default());
                        f.lock().unwrap().push(line);
                    }
                    Err(e) => f.lock().unwrap().push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        });
        Load {
            served,
            failed,
            stop,
            task,
        }
    }

    /// Stops; returns (answered 200, failures).
    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let failed = self.failed.lock().unwrap().clone();
        (self.served.load(Ordering::Relaxed), failed)
    }
}

/// Forces a sidecar to mint a new token until it succeeds: proof that it re-read its store and found the
/// secret the IAM accepts (the old one is revoked).
async fn mints_with_its_store(broker: &TestBroker, what: &str) {
    eventually(what, Duration::from_secs(10), async || {
        broker.post("/v1/token/refresh").await.status() == 200
    })
    .await;
}

/// One site of the chart's topology.
struct KubeSite {
    name: &'static str,
    iam_url: String,
    api: Api,
    api_url: String,
    dir: tempfile::TempDir,
    volume: PathBuf,
    broker: TestBroker,
    kubelet: tokio::task::JoinHandle<()>,
}

impl KubeSite {
    async fn start(iam: &Iam, name: &'static str) -> KubeSite {
        let iam_url = iam.sim.spawn_site(name).await.unwrap();
        let api: Api = Arc::new(Mutex::new(FakeApiServer {
            resource_version: 1,
            ..FakeApiServer::default()
        }));
        api.lock().unwrap().put_secret("secret", SECRET);
        let api_url = start_api_server(Arc::clone(&api)).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), format!("{KUBE_TOKEN}\n")).unwrap();
        write_secret(&dir.path().join("password"), PASSWORD);
        let volume = dir.path().join("volume").join("secret");
        std::fs::create_dir_all(volume.parent().unwrap()).unwrap();
        write_secret(&volume, SECRET);
        let kubelet = tokio::spawn(kubelet(Arc::clone(&api), volume.clone()));
        let mut options = BrokerOptions::one(SecretSource::File(volume.clone()));
        options.policy.forced_refresh_interval = Duration::ZERO;
        let broker = TestBroker::start(&iam_url, options).await;
        KubeSite {
            name,
            iam_url,
            api,
            api_url,
            dir,
            volume,
            broker,
            kubelet,
        }
    }

    /// One run of this site's rotation Job: `rotate` (with `--standby` at a standby site).
    async fn rotate(&self, standby: bool) -> (i32, String, String) {
        let dir = self.dir.path();
        let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
        let mut args: Vec<String> = [
            "rotate",
            "--iam-url",
            &self.iam_url,
            "--entity-id",
            ENTITY,
            "--admin-email",
            ADMIN,
            "--admin-password-file",
            &path("password"),
            "--secret-sink",
            "kubernetes-secret:aa/broker",
            "--kube-api-url",
            &self.api_url,
            "--kube-token-file",
            &path("token"),
            "--site",
            self.name,
            // Nothing may be kept here: the reset record lives on the Secret.
            "--state-dir",
            &path("state"),
            "--log-format",
            "json",
            "--log-level",
            "info",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if standby {
            args.push("--standby".into());
        }
        tokio::task::spawn_blocking(move || run(&args, NO_ENV))
            .await
            .unwrap()
    }

    fn secret(&self) -> Option<String> {
        self.api.lock().unwrap().secret("secret")
    }

    fn record(&self) -> serde_json::Value {
        self.api.lock().unwrap().reset_record().unwrap_or_default()
    }

    /// Moves the recorded reset two hours into the past, as if time had passed (the reset bound keeps
    /// resets of one store an hour apart).
    fn age_record(&self) {
        let mut api = self.api.lock().unwrap();
        let mut record = api.reset_record().expect("a reset record");
        let unix = record["unix"].as_u64().unwrap() - 7200;
        record["unix"] = unix.into();
        api.annotations.insert(
            "aa-token-broker/last-reset".into(),
            record.to_string().into(),
        );
        api.resource_version += 1;
    }

    async fn volume_holds(&self, secret: &str) {
        eventually(
            &format!("{}'s volume to hold the current secret", self.name),
            Duration::from_secs(5),
            async || std::fs::read_to_string(&self.volume).is_ok_and(|s| s.trim() == secret),
        )
        .await;
    }
}

/// The kubelet's part: keeps the volume file in step with the Secret (an atomic swap, as the kubelet's
/// symlink swap is), polling every 20 ms.
async fn kubelet(api: Api, volume: PathBuf) {
    loop {
        let stored = api.lock().unwrap().secret("secret");
        let shown = std::fs::read_to_string(&volume).unwrap_or_default();
        if let Some(secret) = stored.filter(|s| s.trim() != shown.trim()) {
            // The test may be over (its directory gone): then there is nothing left to keep in step.
            let staging = volume.with_extension("tmp");
            if std::fs::write(&staging, format!("{secret}\n"))
                .and_then(|()| std::fs::rename(&staging, &volume))
                .is_err()
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn said(output: &(i32, String, String)) -> String {
    format!(
        "exit {}\nstdout: {}\nstderr: {}",
        output.0, output.1, output.2
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sites_rotate_jobs_reset_once_converge_and_never_fail_a_request() {
    let iam = iam_for_two_sites().await;
    let (a, b) = tokio::join!(
        KubeSite::start(&iam, "site-a"),
        KubeSite::start(&iam, "site-b")
    );
    a.broker.wait_ready(Duration::from_secs(5)).await;
    b.broker.wait_ready(Duration::from_secs(5)).await;
    let loads = [Load::start(&a.broker), Load::start(&b.broker)];
    let mut converged_at_once = 0;
    let mut converged_next_run = 0;
    let mut backup: Option<FakeApiServer> = None;

    for cycle in 1..=3u64 {
        // The secret is due for the primary again (the simulator moves its expiry; no one waits).
        iam.sim.set_secret_expiry(ENTITY, 10 * DAY);
        if cycle > 1 {
            a.age_record();
        }
        if cycle == 3 {
            let api = a.api.lock().unwrap();
            backup = Some(FakeApiServer {
                resource_version: api.resource_version,
                data: api.data.clone(),
                annotations: api.annotations.clone(),
                ..FakeApiServer::default()
            });
        }
        let resets_before = iam.sim.calls(Endpoint::SecretReset);
        // Both Jobs at the same minute.
        let (ran_a, ran_b) = tokio::join!(a.rotate(false), b.rotate(true));
        assert_eq!(ran_a.0, 0, "{}", said(&ran_a));
        assert_eq!(ran_b.0, 0, "{}", said(&ran_b));
        assert!(ran_a.1.contains("rotated"), "{}", said(&ran_a));
        assert_eq!(
            iam.sim.calls(Endpoint::SecretReset),
            resets_before + 1,
            "cycle {cycle}: exactly one reset"
        );
        assert_eq!(iam.sim.site_resets("site-a"), cycle);
        assert_eq!(iam.sim.site_resets("site-b"), 0, "the standby never reset");
        let current = iam.sim.current_secret(ENTITY).unwrap();
        assert_eq!(a.secret().as_deref(), Some(current.as_str()));
        // The record travels with the Secret: when, which site, the new secret's fingerprint.
        let record = a.record();
        assert_eq!(record["site"], "site-a");
        assert_eq!(
            record["secret"],
            fingerprint(&SecretString::from(current.clone()))
        );
        // The standby converges within one run: the one that ran alongside, or its next.
        if b.secret().as_deref() == Some(current.as_str()) {
            assert!(ran_b.1.contains("converged"), "{}", said(&ran_b));
            converged_at_once += 1;
        } else {
            let again = b.rotate(true).await;
            assert_eq!(again.0, 0, "{}", said(&again));
            assert!(again.1.contains("converged"), "{}", said(&again));
            assert_eq!(b.secret().as_deref(), Some(current.as_str()));
            converged_next_run += 1;
        }
        assert_eq!(iam.sim.calls(Endpoint::SecretReset), resets_before + 1);
        for site in [&a, &b] {
            site.volume_holds(&current).await;
            mints_with_its_store(
                &site.broker,
                &format!("{} mints after cycle {cycle}", site.name),
            )
            .await;
        }
        tokio::time::sleep(BETWEEN_CYCLES).await;
    }

    // A primary whose Secret is restored from an old backup (its secret revoked two resets ago)
    // converges, and resets nothing.
    let resets_before = iam.sim.calls(Endpoint::SecretReset);
    {
        let backup = backup.take().unwrap();
        let mut api = a.api.lock().unwrap();
        api.data = backup.data;
        api.annotations = backup.annotations;
        api.resource_version += 1;
    }
    let current = iam.sim.current_secret(ENTITY).unwrap();
    assert_ne!(a.secret().as_deref(), Some(current.as_str()));
    let restored = a.rotate(false).await;
    assert_eq!(restored.0, 0, "{}", said(&restored));
    assert!(restored.1.contains("converged"), "{}", said(&restored));
    assert_eq!(a.secret().as_deref(), Some(current.as_str()));
    assert_eq!(iam.sim.calls(Endpoint::SecretReset), resets_before);
    a.volume_holds(&current).await;

    // The primary is gone (its site cannot reach the IAM). With 4 days left the standby waits; with 2
    // it resets, as the last resort.
    iam.sim.cut_off_site("site-a", true);
    iam.sim.set_secret_expiry(ENTITY, 4 * DAY);
    let gone = a.rotate(false).await;
    assert_eq!(gone.0, 1, "{}", said(&gone));
    let waits = b.rotate(true).await;
    assert_eq!(waits.0, 0, "{}", said(&waits));
    assert!(
        waits.1.contains("not due") && waits.1.contains("standby"),
        "{}",
        said(&waits)
    );
    assert_eq!(iam.sim.calls(Endpoint::SecretReset), resets_before);
    iam.sim.set_secret_expiry(ENTITY, 2 * DAY);
    let last_resort = b.rotate(true).await;
    assert_eq!(last_resort.0, 0, "{}", said(&last_resort));
    assert!(last_resort.1.contains("rotated"), "{}", said(&last_resort));
    assert_eq!(iam.sim.site_resets("site-b"), 1);
    assert_eq!(iam.sim.calls(Endpoint::SecretReset), resets_before + 1);
    assert_eq!(b.record()["site"], "site-b");
    // The primary comes back and converges on the standby's reset.
    iam.sim.cut_off_site("site-a", false);
    let back = a.rotate(false).await;
    assert_eq!(back.0, 0, "{}", said(&back));
    assert!(back.1.contains("converged"), "{}", said(&back));
    let current = iam.sim.current_secret(ENTITY).unwrap();
    for site in [&a, &b] {
        assert_eq!(site.secret().as_deref(), Some(current.as_str()));
        site.volume_holds(&current).await;
        mints_with_its_store(&site.broker, &format!("{} mints at the end", site.name)).await;
    }

    let [load_a, load_b] = loads;
    let (served_a, failed_a) = load_a.finish().await;
    let (served_b, failed_b) = load_b.finish().await;
    eprintln!(
        "two sites, rotate Jobs: resets {} (site-a {}, site-b {}); the standby converged on its simultaneous run {converged_at_once}x, on its next run {converged_next_run}x; token requests answered: site-a {served_a}, site-b {served_b}; failed: {}",
        iam.sim.calls(Endpoint::SecretReset),
        iam.sim.site_resets("site-a"),
        iam.sim.site_resets("site-b"),
        failed_a.len() + failed_b.len()
    );
    assert!(failed_a.is_empty(), "site-a failed: {failed_a:?}");
    assert!(failed_b.is_empty(), "site-b failed: {failed_b:?}");
    assert!(served_a > 100 && served_b > 100);
    for site in [&a, &b] {
        assert!(
            !site.dir.path().join("state").exists(),
            "{}: the Job kept state outside the Secret",
            site.name
        );
        site.kubelet.abort();
    }
    a.broker.stop().await;
    b.broker.stop().await;
}

/// `serve` rotating by itself, at two sites, each with a file store.
fn serve_rotation(role: Role, site: &str) -> RotationSettings {
    RotationSettings {
        admin: AdminCredentials {
            email: ADMIN.into(),
            password: inline_secret(PASSWORD),
        },
        rotate_before: Duration::from_secs(15 * DAY as u64),
        expiry_days: 180,
        // Compare the store with the IAM every second.
        check_interval: Duration::from_secs(1),
        kube: None,
        min_reset_interval: DEFAULT_MIN_RESET_INTERVAL,
        state_dir: std::env::temp_dir().join(format!("aa-broker-sites-{:016x}", fastrand::u64(..))),
        role,
        site: site.into(),
    }
}

async fn serve_site(iam: &Iam, site: &str, role: Role, store: &Path) -> TestBroker {
    let url = iam.sim.spawn_site(site).await.unwrap();
    let mut options = BrokerOptions::one(SecretSource::File(store.to_path_buf()));
    options.rotation = Some(serve_rotation(role, site));
    options.policy.forced_refresh_interval = Duration::ZERO;
    TestBroker::start(&url, options).await
}

fn file_secret(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sites_serving_and_rotating_file_stores_reset_once_and_converge() {
    let iam = iam_for_two_sites().await;
    let dir = tempfile::tempdir().unwrap();
    let (store_a, store_b) = (dir.path().join("a-secret"), dir.path().join("b-secret"));
    write_secret(&store_a, SECRET);
    write_secret(&store_b, SECRET);
    let standby = Role::Standby {
        reset_within: DEFAULT_STANDBY_RESET_WITHIN,
    };
    // Started at the same moment.
    let (a, b) = tokio::join!(
        serve_site(&iam, "site-a", Role::Primary, &store_a),
        serve_site(&iam, "site-b", standby, &store_b)
    );
    // A sidecar that starts just as another site resets has no token until its store converges: the
    // requests are counted from when both are ready.
    a.wait_ready(Duration::from_secs(10)).await;
    b.wait_ready(Duration::from_secs(10)).await;
    let loads = [Load::start(&a), Load::start(&b)];
    eventually("the primary's reset", Duration::from_secs(10), async || {
        iam.sim.site_resets("site-a") == 1
    })
    .await;
    let current = iam.sim.current_secret(ENTITY).unwrap();
    eventually("site-a's store", Duration::from_secs(5), async || {
        file_secret(&store_a) == current
    })
    .await;
    // Within one check (a second) the standby's store holds the primary's secret, and it counted the
    // convergence (the count follows the write, after a confirming read of the IAM).
    let convergences =
        |m: &str| crate::rotation::metric_sum(m, "aa_broker_secret_convergences_total{");
    eventually(
        "the standby to converge",
        Duration::from_secs(5),
        async || file_secret(&store_b) == current && convergences(&b.metrics().await) >= 1.0,
    )
    .await;
    assert_eq!(iam.sim.calls(Endpoint::SecretReset), 1, "exactly one reset");
    assert_eq!(iam.sim.site_resets("site-b"), 0);
    mints_with_its_store(&a, "site-a mints").await;
    mints_with_its_store(&b, "site-b mints").await;

    // Site A's store is restored from a backup that holds the revoked secret: it converges, no reset.
    let before = convergences(&a.metrics().await);
    write_secret(&store_a, SECRET);
    eventually("site-a to converge", Duration::from_secs(5), async || {
        convergences(&a.metrics().await) > before
    })
    .await;
    assert_eq!(file_secret(&store_a), current);
    assert_eq!(iam.sim.calls(Endpoint::SecretReset), 1);

    // Another cycle, while both serve: due again (and the reset record aged as if two hours had passed).
    let ledger = dir.path().join(".a-secret.resets");
    let record = std::fs::read_to_string(&ledger).unwrap();
    let (secs, rest) = record.trim().split_once(' ').unwrap();
    assert!(rest.ends_with("site-a"), "{record}");
    let aged = secs.parse::<u64>().unwrap() - 7200;
    std::fs::write(&ledger, format!("{aged} {rest}\n")).unwrap();
    iam.sim.set_secret_expiry(ENTITY, 10 * DAY);
    eventually(
        "the primary's second reset",
        Duration::from_secs(5),
        async || iam.sim.site_resets("site-a") == 2,
    )
    .await;
    let current = iam.sim.current_secret(ENTITY).unwrap();
    eventually(
        "the standby to converge again",
        Duration::from_secs(5),
        async || file_secret(&store_b) == current,
    )
    .await;
    mints_with_its_store(&b, "site-b mints after the second cycle").await;
    assert_eq!(iam.sim.calls(Endpoint::SecretReset), 2);

    // The primary is gone. With 4 days left the standby keeps waiting (several checks); with 2 it resets.
    let [load_a, load_b] = loads;
    let (served_a, failed_a) = load_a.finish().await;
    a.stop().await;
    iam.sim.set_secret_expiry(ENTITY, 4 * DAY);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        iam.sim.calls(Endpoint::SecretReset),
        2,
        "4 days left: no reset"
    );
    iam.sim.set_secret_expiry(ENTITY, 2 * DAY);
    eventually(
        "the standby's last resort",
        Duration::from_secs(5),
        async || iam.sim.site_resets("site-b") == 1,
    )
    .await;
    let newest = iam.sim.current_secret(ENTITY).unwrap();
    eventually("site-b's store", Duration::from_secs(5), async || {
        file_secret(&store_b) == newest
    })
    .await;
    mints_with_its_store(&b, "site-b mints after its reset").await;
    let (served_b, failed_b) = load_b.finish().await;
    eprintln!(
        "two sites, serve rotating file stores: resets {} (site-a {}, site-b {}); token requests answered: site-a {served_a}, site-b {served_b}; failed: {}",
        iam.sim.calls(Endpoint::SecretReset),
        iam.sim.site_resets("site-a"),
        iam.sim.site_resets("site-b"),
        failed_a.len() + failed_b.len()
    );
    assert_eq!(iam.sim.calls(Endpoint::SecretReset), 3);
    assert!(failed_a.is_empty(), "site-a failed: {failed_a:?}");
    assert!(failed_b.is_empty(), "site-b failed: {failed_b:?}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_without_admin_credentials_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    write_secret(&secret, SECRET);
    let secret = secret.to_str().unwrap().to_string();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        run(
            &[
                "serve",
                "--iam-url",
                "http://127.0.0.1:9/iam",
                "--entity-id",
                ENTITY,
                "--secret-file",
                &secret,
            ],
            &[("AA_BROKER_ROTATION_STANDBY", "true")],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--rotation-standby") && stderr.contains("External Secrets"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_be_converged_shows_in_monitoring_until_it_can() {
    let iam = iam_for_two_sites().await;
    // Another site has reset the secret; this site's store cannot be written yet.
    iam.sim.set_secret(ENTITY, "reset-by-the-other-site");
    iam.sim.set_secret_expiry(ENTITY, 170 * DAY);
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    write_secret(&secret, SECRET);
    let gate = dir.path().join("store-is-up");
    let mut options = BrokerOptions::one(SecretSource::File(secret.clone()));
    options.rotation = Some(serve_rotation(Role::Primary, "site-a"));
    options.sink = Some(aa_token_broker::secret::SinkSpec::Exec(format!(
        "sh -c 'test -e {gate} && cat > {secret}.part && mv {secret}.part {secret}'",
        gate = gate.display(),
        secret = secret.display()
    )));
    let broker = TestBroker::start(&iam.url, options).await;
    let gauge = |metrics: &str, name: &str| {
        crate::rotation::metric_sum(metrics, &format!("{name}{{entity=\"{ENTITY}\"}}"))
    };
    // Longer than one check interval (a second) without converging: what the alert looks for.
    eventually(
        "the divergence to outlast a check interval",
        Duration::from_secs(10),
        async || {
            let metrics = broker.metrics().await;
            gauge(&metrics, "aa_broker_secret_store_diverged_seconds")
                > gauge(&metrics, "aa_broker_secret_check_interval_seconds")
        },
    )
    .await;
    assert_eq!(iam.sim.calls(Endpoint::SecretReset), 0, "no reset");
    // Tokens still flow: the broker uses the IAM's secret from memory.
    assert_eq!(broker.get("/v1/token").await.status(), 200);
    std::fs::write(&gate, "").unwrap();
    eventually("the convergence", Duration::from_secs(10), async || {
        let metrics = broker.metrics().await;
        gauge(&metrics, "aa_broker_secret_store_diverged_seconds") == 0.0
            && crate::rotation::metric_sum(&metrics, "aa_broker_secret_convergences_total{") >= 1.0
    })
    .await;
    assert_eq!(file_secret(&secret), "reset-by-the-other-site");
    assert_eq!(iam.sim.calls(Endpoint::SecretReset), 0, "still no reset");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_gives_a_store_it_cannot_read_back_the_iams_secret_and_resets_only_when_due() {
    let iam = iam_for_two_sites().await;
    iam.sim.set_secret_expiry(ENTITY, 170 * DAY);
    iam.sim.set_secret(ENTITY, "reset-by-the-other-site");
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    write_secret(&password, PASSWORD);
    let vault = dir.path().join("vault");
    let args: Vec<String> = [
        "rotate",
        "--iam-url",
        &iam.url,
        "--entity-id",
        ENTITY,
        "--admin-email",
        ADMIN,
        "--admin-password-file",
        password.to_str().unwrap(),
        "--secret-sink",
        &format!("exec:tee {}", vault.display()),
        "--state-dir",
        dir.path().join("state").to_str().unwrap(),
        "--standby",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || run(&args, NO_ENV))
        .await
        .unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("cannot be read back") && stdout.contains("not due"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(&vault).unwrap(),
        "reset-by-the-other-site"
    );
    assert_eq!(iam.sim.calls(Endpoint::SecretReset), 0);
    assert!(
        !stdout.contains("reset-by-the-other-site") && !stderr.contains("reset-by-the-other-site")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_rotators_of_one_secret_the_one_whose_claim_loses_does_not_reset() {
    let iam = iam_for_two_sites().await;
    let site = KubeSite::start(&iam, "site-a").await;
    // Another rotator writes the Secret between this run's read of the record and its claim.
    site.api.lock().unwrap().race_next_claim = true;
    let ran = site.rotate(false).await;
    assert_eq!(ran.0, 0, "{}", said(&ran));
    assert!(ran.1.contains("another rotator"), "{}", said(&ran));
    assert_eq!(iam.sim.calls(Endpoint::SecretReset), 0, "no reset");
    assert_eq!(site.secret().as_deref(), Some(SECRET));
    // The next run finds the way clear and resets once.
    let again = site.rotate(false).await;
    assert!(again.1.contains("rotated"), "{}", said(&again));
    assert_eq!(iam.sim.calls(Endpoint::SecretReset), 1);
    site.kubelet.abort();
    site.broker.stop().await;
}
