//! Configuration, in process: every mistake names its setting on one line, and flags win over the file,
//! the file over defaults. (The binary's exit code 2 for a mistake is checked by the integration tests.)

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use secrecy::SecretString;

use super::cli::{Cli, Command};
use super::{BrokerArgs, BrokerSettings, ConfigError, EnvSecrets, broker_settings};
use crate::test_support::secret_file;

/// `serve` with these arguments, with `env` standing in for the secret variables.
fn serve(args: &[&str], env: &EnvSecrets) -> Result<BrokerSettings, ConfigError> {
    let cli = Cli::try_parse_from(
        std::iter::once("aa-token-broker")
            .chain(["serve"])
            .chain(args.iter().copied()),
    )
    // What `main` prints for a usage error: its first line (it names the flag).
    .map_err(|e| {
        let rendered = e.render().to_string();
        ConfigError::new("the command line", rendered.lines().next().unwrap_or(""))
    })?;
    let Command::Serve(args) = cli.command else {
        unreachable!("parsed as serve");
    };
    broker_settings(
        BrokerArgs {
            iam: &args.iam,
            entity: &args.entity,
            listen: &args.listen,
            log: &args.log,
            admin: &args.admin,
            rotation: &args.rotation,
            verify: &args.verify,
        },
        env,
    )
}

#[test]
fn every_mistake_names_its_setting_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), "secret");
    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(
        &bad_toml,
        "environment = \"sandbox\"\n[[entities]]\nid = 5\n",
    )
    .unwrap();
    let typo_toml = dir.path().join("typo.toml");
    std::fs::write(&typo_toml, "enviroment = \"sandbox\"\n").unwrap();
    let (secret, bad_toml, typo_toml) = (
        secret.to_str().unwrap(),
        bad_toml.to_str().unwrap(),
        typo_toml.to_str().unwrap(),
    );
    let url = "http://127.0.0.1:9/iam";
    let entity = ["--entity-id", "FIU-A", "--secret-file", secret];
    let with_entity = |extra: &[&'static str]| -> Vec<String> {
        entity.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let table: Vec<(Vec<String>, &str)> = vec![
        (vec!["--iam-url".into(), url.into()], "--entity-id"),
        (
            vec![
                "--iam-url".into(),
                url.into(),
                "--entity-id".into(),
                "FIU-A".into(),
            ],
            "--secret-file",
        ),
        (
            vec![
                "--iam-url",
                url,
                "--entity-id",
                "FIU-A",
                "--secret-file",
                "/nonexistent/secret",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            "--secret-file",
        ),
        (
            vec![
                "--iam-url",
                url,
                "--entity-id",
                "FIU-A",
                "--secret-file",
                "/tmp",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            "--secret-file",
        ),
        (with_entity(&["--iam-url", "not a url"]), "--iam-url"),
        (with_entity(&["--iam-url", "ftp://x/iam"]), "--iam-url"),
        (
            with_entity(&["--iam-url", "https://user:pw@x/iam"]),
            "--iam-url",
        ),
        (
            with_entity(&["--iam-url", "http://iam.example/iam"]),
            "--iam-url",
        ),
        (with_entity(&[]), "--iam-url"),
        (with_entity(&["--environment", "moon"]), "--environment"),
        (
            with_entity(&["--iam-url", url, "--environment", "sandbox"]),
            "--iam-url",
        ),
        (
            vec![
                "--iam-url",
                url,
                "--entity-id",
                "bad id",
                "--secret-file",
                secret,
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            "--entity-id",
        ),
        (
            vec![
                "--iam-url",
                url,
                "--entity-id",
                "..",
                "--secret-file",
                secret,
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            "--entity-id",
        ),
        (vec!["--config".into(), bad_toml.into()], "--config"),
        (vec!["--config".into(), typo_toml.into()], "--config"),
        (
            vec!["--config".into(), "/nonexistent.toml".into()],
            "--config",
        ),
        (
            with_entity(&[
                "--iam-url",
                url,
                "--listen",
                "127.0.0.1:1",
                "--admin-listen",
                "127.0.0.1:1",
            ]),
            "--admin-listen",
        ),
        (
            with_entity(&["--iam-url", url, "--log-format", "xml"]),
            "--log-format",
        ),
        (
            with_entity(&["--iam-url", url, "--max-connections", "0"]),
            "--max-connections",
        ),
        (
            with_entity(&["--iam-url", url, "--write-timeout", "0"]),
            "--write-timeout",
        ),
        (
            with_entity(&["--iam-url", url, "--max-requests-per-connection", "0"]),
            "--max-requests-per-connection",
        ),
        (
            with_entity(&["--iam-url", url, "--admin-email", "ops@fiu.example"]),
            "--admin-password-file",
        ),
        (
            with_entity(&[
                "--iam-url",
                url,
                "--admin-email",
                "ops@fiu.example",
                "--admin-password-file",
                "/nonexistent",
            ]),
            "--admin-password-file",
        ),
        // A standby without the admin user cannot read the IAM: refused, pointing at a shared store.
        (
            with_entity(&["--iam-url", url, "--rotation-standby"]),
            "--rotation-standby",
        ),
        (
            with_entity(&["--iam-url", url, "--standby"]),
            "External Secrets",
        ),
    ];
    for (args, names) in table {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let error = serve(&args, &EnvSecrets::default())
            .err()
            .unwrap_or_else(|| panic!("{args:?} was accepted"));
        let line = error.to_string();
        assert!(
            line.contains(names),
            "{args:?}: does not name {names}: {line}"
        );
        assert!(!line.contains('\n'), "{args:?}: not one line: {line}");
    }
    // A secret from the variable stands in for the file; a bad IAM URL is still named.
    let env = EnvSecrets {
        entity_secret: Some(SecretString::from("from-the-variable")),
        admin_password: None,
    };
    let error = serve(&["--iam-url", "bad", "--entity-id", "FIU-A"], &env).unwrap_err();
    assert!(error.to_string().contains("--iam-url"), "{error}");
    assert!(serve(&["--iam-url", url, "--entity-id", "FIU-A"], &env).is_ok());
}

#[test]
fn standby_site_and_threshold_come_from_flags_variables_or_the_file() {
    use crate::secret::Role;
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), "secret");
    let password = secret_file(dir.path(), "password");
    let (secret, password) = (secret.to_str().unwrap(), password.to_str().unwrap());
    let base = [
        "--iam-url",
        "http://127.0.0.1:9/iam",
        "--entity-id",
        "FIU-A",
        "--secret-file",
        secret,
        "--admin-email",
        "ops@fiu.example",
        "--admin-password-file",
        password,
    ];
    let with = |extra: &[&str]| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        serve(&args, &EnvSecrets::default())
    };
    let rotation = |s: BrokerSettings| s.rotation.unwrap();
    let primary = rotation(with(&[]).unwrap());
    assert_eq!(primary.role, Role::Primary);
    assert!(!primary.site.is_empty() && primary.site.len() <= 63);
    let standby = rotation(with(&["--standby", "--site", "dr-chennai"]).unwrap());
    assert_eq!(
        standby.role,
        Role::Standby {
            reset_within: Duration::from_secs(3 * 86_400)
        }
    );
    assert_eq!(standby.site, "dr-chennai");
    let config = dir.path().join("broker.toml");
    std::fs::write(
        &config,
        "rotation_standby = true\nstandby_reset_days = 2.5\nsite = \"dr\"\n",
    )
    .unwrap();
    let from_file = rotation(with(&["--config", config.to_str().unwrap()]).unwrap());
    assert_eq!(
        from_file.role,
        Role::Standby {
            reset_within: Duration::from_secs(216_000)
        }
    );
    assert_eq!(from_file.site, "dr");
    for (extra, names) in [
        (&["--site", "two words"][..], "--site"),
        (&["--site", ""][..], "--site"),
        (&["--standby-reset-days", "0"][..], "--standby-reset-days"),
        (&["--standby-reset-days", "200"][..], "--standby-reset-days"),
    ] {
        let error = with(extra).unwrap_err().to_string();
        assert!(error.contains(names), "{extra:?}: {error}");
    }
}

#[test]
fn flags_win_over_the_file_and_the_file_over_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), "secret");
    let secret = secret.to_str().unwrap();
    let config = dir.path().join("broker.toml");
    std::fs::write(
        &config,
        format!(
            "iam_url = \"http://127.0.0.1:9/iam\"\nlisten = \"127.0.0.1:1111\"\nmax_connections = 10\n\
             write_timeout = 3\nshutdown_grace = 4\n[[entities]]\nid = \"FIU-FILE\"\nsecret_file = \"{secret}\"\n"
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let listen = |s: &BrokerSettings| s.listen;
    let addr = |raw: &str| raw.parse::<SocketAddr>().unwrap();
    struct Case<'a> {
        args: Vec<&'a str>,
        check: Box<dyn Fn(&BrokerSettings) -> bool>,
        what: &'a str,
    }
    let cases = vec![
        Case {
            args: vec!["--config", config],
            check: Box::new(move |s| listen(s) == addr("127.0.0.1:1111")),
            what: "the file's listen",
        },
        Case {
            args: vec!["--config", config, "--listen", "127.0.0.1:2222"],
            check: Box::new(move |s| listen(s) == addr("127.0.0.1:2222")),
            what: "the flag's listen over the file's",
        },
        Case {
            args: vec!["--config", config],
            check: Box::new(|s| s.limits.max_connections == 10),
            what: "the file's max_connections",
        },
        Case {
            args: vec!["--config", config, "--max-connections", "20"],
            check: Box::new(|s| s.limits.max_connections == 20),
            what: "the flag's max_connections over the file's",
        },
        Case {
            args: vec!["--config", config, "--write-timeout", "7"],
            check: Box::new(|s| {
                s.limits.write_timeout == Duration::from_secs(7)
                    && s.limits.shutdown_grace == Duration::from_secs(4)
            }),
            what: "a flag for one setting, the file for the next",
        },
        Case {
            args: vec!["--config", config, "--iam-url", "http://127.0.0.1:8/iam"],
            check: Box::new(|s| s.iam_url == "http://127.0.0.1:8/iam"),
            what: "the flag's --iam-url over the file's",
        },
        Case {
            args: vec![
                "--iam-url",
                "http://127.0.0.1:9/iam",
                "--entity-id",
                "FIU-A",
                "--secret-file",
                secret,
            ],
            check: Box::new(move |s| {
                s.listen == addr("127.0.0.1:7373")
                    && s.limits.max_connections == 1024
                    && s.limits.write_timeout == Duration::from_secs(10)
                    && s.limits.max_requests_per_connection == 10_000
            }),
            what: "the defaults",
        },
    ];
    for case in cases {
        let settings = serve(&case.args, &EnvSecrets::default())
            .unwrap_or_else(|e| panic!("{}: {e}", case.what));
        assert!((case.check)(&settings), "{}: {settings:?}", case.what);
    }
}
