//! Node configuration: the files under `cluster-config/` load and validate, sources override each other in the
//! documented order (defaults < file < `HUBMESH_*` environment < flags), and bad or missing settings are reported
//! with their key and source.
//!
//! The environment is passed to `NodeConfig::load_with_env` explicitly, so these tests never touch the process's.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hubmesh_cli::config::{env_name, ConfigError, NodeConfig, Origin, Overrides, Secret, KEYS};

const NO_ENV: [(&str, &str); 0] = [];

fn cluster_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster-config")
}

fn local(n: u8) -> PathBuf {
    cluster_config().join("local").join(format!("node-{n}.toml"))
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn load(file: Option<&Path>, env: &[(&str, &str)], overrides: &Overrides) -> Result<NodeConfig, ConfigError> {
    NodeConfig::load_with_env(file, env.iter().copied(), overrides)
}

/// A temporary directory with `node.toml` holding `text`.
fn write_config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// The single setting error of `result`, which must have failed.
fn only_error<T: std::fmt::Debug>(result: Result<T, ConfigError>) -> hubmesh_cli::config::SettingError {
    let error = result.expect_err("the configuration should be rejected");
    match error.settings() {
        [one] => one.clone(),
        other => panic!("expected one setting error, got {other:?} ({error})"),
    }
}

#[test]
fn every_file_under_cluster_config_loads_and_validates() {
    let mut files = Vec::new();
    let mut dirs = vec![cluster_config()];
    // Bounded: the folder is shallow.
    for _ in 0..16 {
        let Some(dir) = dirs.pop() else { break };
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "toml") {
                files.push(path);
            }
        }
    }
    assert!(dirs.is_empty(), "cluster-config/ is deeper than expected");
    assert!(
        files.len() >= 4,
        "expected example.toml and local/node-1..3.toml, found {files:?}"
    );
    for file in files {
        let config =
            load(Some(&file), &NO_ENV, &Overrides::new()).unwrap_or_else(|error| panic!("{}: {error}", file.display()));
        config
            .validate()
            .unwrap_or_else(|error| panic!("{}: {error}", file.display()));
    }
}

#[test]
fn the_local_cluster_is_three_loopback_nodes_seeding_each_other() {
    let seeds = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"];
    for n in 1..=3u8 {
        let settings = load(Some(&local(n)), &NO_ENV, &Overrides::new())
            .unwrap()
            .node_settings()
            .unwrap();
        assert_eq!(settings.name, format!("node-{n}"));
        assert_eq!(settings.listen, addr(&format!("127.0.0.1:500{n}")));
        assert!(settings.demo);
        let cluster = settings.cluster.expect("a cluster node");
        assert_eq!(cluster.membership.node_name, format!("node-{n}"));
        assert_eq!(cluster.membership.cluster_id, "local");
        assert_eq!(cluster.membership.gossip_listen, addr(&format!("127.0.0.1:700{n}")));
        assert_eq!(cluster.membership.gossip_advertise, addr(&format!("127.0.0.1:700{n}")));
        assert_eq!(cluster.membership.seeds, seeds);
        assert_eq!(cluster.link.listen, addr(&format!("127.0.0.1:710{n}")));
        assert_eq!(cluster.link.advertise, addr(&format!("127.0.0.1:710{n}")));
        // The secret file is found relative to the configuration file, not the working directory.
        let expected = std::fs::read_to_string(cluster_config().join("local").join("secret")).unwrap();
        assert_eq!(cluster.link.secret, expected.trim());
        assert!(cluster.link.secret.contains("local-development-only"));
    }
}

#[test]
fn the_readme_and_the_example_name_every_key() {
    let readme = std::fs::read_to_string(cluster_config().join("README.md")).unwrap();
    let example = std::fs::read_to_string(cluster_config().join("example.toml")).unwrap();
    for key in KEYS {
        assert!(
            readme.contains(&format!("`{key}`")),
            "README.md does not document `{key}`"
        );
        assert!(
            readme.contains(&env_name(key)),
            "README.md does not name {}",
            env_name(key)
        );
        let (_, name) = key.split_once('.').unwrap();
        assert!(
            example.contains(&format!("\n{name} = ")) || example.contains(&format!("\n# {name} = ")),
            "example.toml does not show `{key}`"
        );
    }
}

#[test]
fn no_file_is_a_single_node_with_the_demo_hub_on_port_5000() {
    let config = load(None, &NO_ENV, &Overrides::new()).unwrap();
    let settings = config.node_settings().unwrap();
    assert_eq!(settings.name, "node-1");
    assert_eq!(settings.listen, addr("127.0.0.1:5000"));
    assert!(settings.demo);
    assert!(settings.cluster.is_none());
    let defaults = hubmesh::Limits::default();
    assert_eq!(settings.limits.max_message, defaults.max_message);
    assert_eq!(settings.limits.outbound_queue, defaults.outbound_queue);
    assert_eq!(settings.limits.keep_alive, defaults.keep_alive);
    assert_eq!(settings.limits.client_timeout, defaults.client_timeout);
    assert_eq!(config.origin("http.listen"), Origin::Default);
}

#[test]
fn the_environment_overrides_the_file_and_flags_override_both() {
    let file = local(1);
    let env = [
        ("HUBMESH_HTTP__LISTEN", "127.0.0.1:6001"),
        ("HUBMESH_NODE__NAME", "from-env"),
        ("HUBMESH_LIMITS__OUTBOUND_QUEUE", "2048"),
        ("HUBMESH_LIMITS__MAX_MESSAGE", "1MiB"),
        ("HUBMESH_LIMITS__KEEP_ALIVE", "5s"),
        ("HUBMESH_CLUSTER__SEEDS", "127.0.0.1:7001, 127.0.0.1:7009"),
        ("HUBMESH_CLUSTER__PHI_THRESHOLD", "10"),
        ("HUBMESH_HUBS__DEMO", "false"),
        // Not configuration variables: no `__`, or another prefix.
        ("HUBMESH_NODE_TEST_FILES", "x"),
        ("HUBMESH_LISTEN", "nonsense"),
        ("OTHER_HTTP__LISTEN", "nonsense"),
    ];
    let config = load(Some(&file), &env, &Overrides::new()).unwrap();
    let settings = config.node_settings().unwrap();
    assert_eq!(settings.listen, addr("127.0.0.1:6001"));
    assert_eq!(settings.name, "from-env");
    assert_eq!(settings.limits.outbound_queue, 2048);
    assert_eq!(settings.limits.max_message, 1 << 20);
    assert!(settings.limits.max_frame >= settings.limits.max_message);
    assert_eq!(settings.limits.keep_alive, Duration::from_secs(5));
    assert!(!settings.demo);
    let cluster = settings.cluster.unwrap();
    assert_eq!(cluster.membership.seeds, ["127.0.0.1:7001", "127.0.0.1:7009"]);
    assert_eq!(cluster.membership.phi_threshold, 10.0);
    // Untouched keys keep the file's values.
    assert_eq!(cluster.membership.gossip_listen, addr("127.0.0.1:7001"));
    assert_eq!(config.origin("http.listen"), Origin::Env("HUBMESH_HTTP__LISTEN".into()));
    assert_eq!(config.origin("cluster.gossip"), Origin::File(file.clone()));

    let mut flags = Overrides::new();
    flags
        .set("http.listen", "127.0.0.1:6101")
        .set_list("cluster.seeds", ["127.0.0.1:7003"])
        .set("hubs.demo", "true");
    let config = load(Some(&file), &env, &flags).unwrap();
    let settings = config.node_settings().unwrap();
    assert_eq!(settings.listen, addr("127.0.0.1:6101"));
    assert_eq!(settings.name, "from-env");
    assert!(settings.demo);
    assert_eq!(settings.cluster.unwrap().membership.seeds, ["127.0.0.1:7003"]);
    assert_eq!(config.origin("http.listen"), Origin::CommandLine);
}

#[test]
fn flags_alone_make_a_cluster_node() {
    let mut flags = Overrides::new();
    flags
        .set("node.name", "n1")
        .set("http.listen", "127.0.0.1:0")
        .set("cluster.id", "test")
        .set("cluster.gossip", "127.0.0.1:0")
        .set("cluster.link", "127.0.0.1:0");
    let env = [("HUBMESH_CLUSTER__SECRET", "12345")];
    let settings = load(None, &env, &flags).unwrap().node_settings().unwrap();
    let cluster = settings.cluster.unwrap();
    assert!(cluster.membership.seeds.is_empty(), "no seeds: a cluster of one");
    // A numeric secret from the environment stays text.
    assert_eq!(cluster.link.secret, "12345");
    assert_eq!(cluster.membership.gossip_interval, Duration::from_millis(200));
}

#[test]
fn an_exported_secret_alone_leaves_a_node_single() {
    let env = [("HUBMESH_CLUSTER__SECRET", "s3cret")];
    let config = load(None, &env, &Overrides::new()).unwrap();
    assert!(!config.is_clustered());
    assert!(config.node_settings().unwrap().cluster.is_none());
}

#[test]
fn a_bad_address_names_the_key_and_the_file() {
    let (_dir, path) = write_config("[http]\nlisten = \"nonsense\"\n");
    let error = only_error(load(Some(&path), &NO_ENV, &Overrides::new()));
    assert_eq!(error.key, "http.listen");
    assert_eq!(error.origin, Origin::File(path.clone()));
    assert!(error.reason.contains("nonsense"), "{error}");
    let text = error.to_string();
    assert!(text.contains("http.listen") && text.contains("node.toml"), "{text}");
}

#[test]
fn a_bad_value_from_the_environment_or_a_flag_names_its_source() {
    let env = [("HUBMESH_CLUSTER__GOSSIP", "localhost")];
    let error = only_error(load(Some(&local(2)), &env, &Overrides::new()));
    assert_eq!(error.key, "cluster.gossip");
    assert_eq!(error.origin, Origin::Env("HUBMESH_CLUSTER__GOSSIP".into()));
    assert!(error.to_string().contains("HUBMESH_CLUSTER__GOSSIP"), "{error}");

    let mut flags = Overrides::new();
    flags.set("http.workers", "many");
    let error = only_error(load(None, &NO_ENV, &flags));
    assert_eq!(error.key, "http.workers");
    assert_eq!(error.origin, Origin::CommandLine);

    let env = [("HUBMESH_LIMITS__KEEP_ALIVE", "soon")];
    let error = only_error(load(None, &env, &Overrides::new()));
    assert_eq!(error.key, "limits.keep_alive");
    assert!(error.reason.contains("soon"), "{error}");
}

#[test]
fn a_missing_secret_names_the_key() {
    let (_dir, path) = write_config(
        r#"
[node]
name = "a"
[cluster]
id = "c"
gossip = "127.0.0.1:7001"
link = "127.0.0.1:7101"
seeds = ["127.0.0.1:7001", "127.0.0.1:7002"]
"#,
    );
    let config = load(Some(&path), &NO_ENV, &Overrides::new()).unwrap();
    let error = only_error(config.node_settings());
    assert_eq!(error.key, "cluster.secret");
    assert!(error.to_string().contains("HUBMESH_CLUSTER__SECRET"), "{error}");

    // The environment supplies it.
    let env = [("HUBMESH_CLUSTER__SECRET", "from-env")];
    let settings = load(Some(&path), &env, &Overrides::new())
        .unwrap()
        .node_settings()
        .unwrap();
    assert_eq!(settings.cluster.unwrap().link.secret, "from-env");
}

#[test]
fn a_missing_secret_file_names_the_key_and_the_path() {
    let (_dir, path) = write_config(
        "[node]\nname = \"a\"\n[cluster]\nid = \"c\"\ngossip = \"127.0.0.1:7001\"\nlink = \"127.0.0.1:7101\"\n\
         secret_file = \"no-such-secret\"\n",
    );
    let error = only_error(load(Some(&path), &NO_ENV, &Overrides::new()).unwrap().node_settings());
    assert_eq!(error.key, "cluster.secret_file");
    assert!(error.reason.contains("no-such-secret"), "{error}");
}

#[test]
fn the_later_source_of_the_secret_wins() {
    let (dir, path) = write_config(
        "[node]\nname = \"a\"\n[cluster]\nid = \"c\"\ngossip = \"127.0.0.1:7001\"\nlink = \"127.0.0.1:7101\"\n\
         secret_file = \"secret\"\n",
    );
    std::fs::write(dir.path().join("secret"), "from-file\n").unwrap();
    let secret = |env: &[(&str, &str)], flags: &Overrides| {
        load(Some(&path), env, flags)
            .unwrap()
            .node_settings()
            .unwrap()
            .cluster
            .unwrap()
            .link
            .secret
    };
    assert_eq!(secret(&NO_ENV, &Overrides::new()), "from-file");
    let env = [("HUBMESH_CLUSTER__SECRET", "from-env")];
    assert_eq!(secret(&env, &Overrides::new()), "from-env");
    let other = dir.path().join("other-secret");
    std::fs::write(&other, "from-flag").unwrap();
    let mut flags = Overrides::new();
    flags.set("cluster.secret_file", other.to_str().unwrap());
    assert_eq!(secret(&env, &flags), "from-flag");

    // Both in the same file is ambiguous.
    let (_dir, both) = write_config(
        "[node]\nname = \"a\"\n[cluster]\nid = \"c\"\ngossip = \"127.0.0.1:7001\"\nlink = \"127.0.0.1:7101\"\n\
         secret = \"x\"\nsecret_file = \"secret\"\n",
    );
    let error = only_error(load(Some(&both), &NO_ENV, &Overrides::new()).unwrap().node_settings());
    assert_eq!(error.key, "cluster.secret");
}

#[test]
fn a_cluster_node_needs_its_name_id_and_addresses_and_all_problems_are_reported() {
    let (_dir, path) = write_config("[cluster]\nseeds = [\"127.0.0.1:7001\", \"nonsense\"]\nsecret = \"x\"\n");
    let error = load(Some(&path), &NO_ENV, &Overrides::new())
        .unwrap()
        .node_settings()
        .unwrap_err();
    let mut keys: Vec<&str> = error.settings().iter().map(|error| error.key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "cluster.gossip",
            "cluster.id",
            "cluster.link",
            "cluster.seeds",
            "node.name"
        ],
        "{error}"
    );
}

#[test]
fn an_unknown_key_is_an_error_that_names_it() {
    let (_dir, path) = write_config("[http]\nlisten = \"127.0.0.1:5000\"\nlistn = \"127.0.0.1:5001\"\n");
    let error = only_error(load(Some(&path), &NO_ENV, &Overrides::new()));
    assert_eq!(error.key, "http.listn");
    assert!(error.reason.contains("listen"), "{error}");

    let env = [("HUBMESH_HTTP__LISTN", "127.0.0.1:5001")];
    let error = only_error(load(None, &env, &Overrides::new()));
    assert_eq!(error.key, "http.listn");
    assert_eq!(error.origin, Origin::Env("HUBMESH_HTTP__LISTN".into()));
}

#[test]
fn out_of_range_values_are_rejected() {
    let (_dir, path) = write_config(
        "[http]\nworkers = 0\n[limits]\nmax_message = 0\noutbound_queue = 0\nkeep_alive = \"0s\"\nclient_timeout = \"0s\"\n",
    );
    let error = load(Some(&path), &NO_ENV, &Overrides::new())
        .unwrap()
        .node_settings()
        .unwrap_err();
    let keys: Vec<&str> = error.settings().iter().map(|error| error.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "http.workers",
            "limits.max_message",
            "limits.outbound_queue",
            "limits.keep_alive",
            "limits.client_timeout"
        ],
        "{error}"
    );
    let (_dir, path) = write_config(
        "[node]\nname = \"a\"\n[cluster]\nid = \"c\"\ngossip = \"0.0.0.0:7001\"\nlink = \"127.0.0.1:7101\"\n\
         secret = \"x\"\ngossip_interval = \"5s\"\nphi_threshold = -1\n",
    );
    let error = load(Some(&path), &NO_ENV, &Overrides::new())
        .unwrap()
        .node_settings()
        .unwrap_err();
    let keys: Vec<&str> = error.settings().iter().map(|error| error.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "cluster.gossip_advertise",
            "cluster.gossip_interval",
            "cluster.phi_threshold"
        ],
        "{error}"
    );
}

#[test]
fn a_missing_file_is_reported_as_such() {
    let missing = cluster_config().join("no-such-file.toml");
    let error = load(Some(&missing), &NO_ENV, &Overrides::new()).unwrap_err();
    assert!(matches!(error, ConfigError::File { .. }), "{error}");
    assert!(error.to_string().contains("no-such-file.toml"), "{error}");
}

#[test]
fn a_backend_node_serves_no_hubs() {
    let (_dir, path) = write_config("hubs = []\n");
    let settings = load(Some(&path), &NO_ENV, &Overrides::new())
        .unwrap()
        .node_settings()
        .unwrap();
    assert!(!settings.demo);
    let (_dir, path) = write_config("hubs = [\"demo\"]\n");
    assert!(load(Some(&path), &NO_ENV, &Overrides::new()).unwrap().hubs.demo);
    let (_dir, path) = write_config("hubs = [\"chat\"]\n");
    let error = only_error(load(Some(&path), &NO_ENV, &Overrides::new()));
    assert_eq!(error.key, "hubs");
    assert!(error.reason.contains("chat"), "{error}");
}

#[test]
fn previous_secrets_come_from_the_list_the_file_and_the_environment() {
    let (dir, path) = write_config(
        "[node]\nname = \"a\"\n[cluster]\nid = \"c\"\ngossip = \"127.0.0.1:7001\"\nlink = \"127.0.0.1:7101\"\n\
         secret = \"s3\"\nprevious_secrets = [\"s2\"]\nprevious_secret_file = \"previous\"\n",
    );
    std::fs::write(dir.path().join("previous"), "s1\n\n  s2  \n").unwrap();
    let previous = |env: &[(&str, &str)]| {
        load(Some(&path), env, &Overrides::new())
            .unwrap()
            .node_settings()
            .unwrap()
            .cluster
            .unwrap()
            .link
            .previous_secrets
    };
    assert_eq!(previous(&NO_ENV), ["s2", "s1"]);
    let env = [("HUBMESH_CLUSTER__PREVIOUS_SECRETS", "p1, p2")];
    assert_eq!(previous(&env), ["p1", "p2", "s1", "s2"]);

    // The current secret is not a previous one; an empty file says so; neither is ever shown.
    let env = [("HUBMESH_CLUSTER__PREVIOUS_SECRETS", "s3")];
    let error = only_error(load(Some(&path), &env, &Overrides::new()).unwrap().node_settings());
    assert_eq!(error.key, "cluster.previous_secrets");
    std::fs::write(dir.path().join("previous"), "\n").unwrap();
    let config = load(Some(&path), &NO_ENV, &Overrides::new()).unwrap();
    assert!(!format!("{config:?}").contains("s2"), "{config:?}");
    let error = only_error(config.node_settings());
    assert_eq!(error.key, "cluster.previous_secret_file");
    assert!(error.reason.contains("empty"), "{error}");
}

#[test]
fn the_secret_is_never_shown_by_debug() {
    let env = [("HUBMESH_CLUSTER__SECRET", "do-not-print-me")];
    let config = load(Some(&local(1)), &env, &Overrides::new()).unwrap();
    let settings = config.node_settings().unwrap();
    assert!(!format!("{config:?}").contains("do-not-print-me"));
    assert!(!format!("{settings:?}").contains("do-not-print-me"));
    assert_eq!(format!("{:?}", Secret::new("do-not-print-me")), "Secret(<redacted>)");
}

#[test]
fn settings_make_a_builder() {
    // Building (not starting) checks the builder takes the settings; serving is the node tests' business.
    let config = load(Some(&local(3)), &NO_ENV, &Overrides::new()).unwrap();
    let settings = config.node_settings().unwrap();
    let builder = settings.builder();
    assert!(format!("{builder:?}").contains("node-3"));
}

#[test]
fn link_tls_files_are_read_relative_to_the_file_and_need_all_three_keys() {
    let cluster = "[node]\nname = \"node-1\"\n[cluster]\nid = \"c\"\ngossip = \"127.0.0.1:7001\"\n\
                   link = \"127.0.0.1:7101\"\nsecret = \"s\"\n";
    let (dir, path) = write_config(&format!(
        "{cluster}link_tls_cert = \"node.crt\"\nlink_tls_key = \"node.key\"\nlink_tls_ca = \"node.crt\"\n"
    ));
    let pinned = rcgen::generate_simple_self_signed(vec!["node-1".to_owned()]).unwrap();
    std::fs::write(dir.path().join("node.crt"), pinned.cert.pem()).unwrap();
    std::fs::write(dir.path().join("node.key"), pinned.signing_key.serialize_pem()).unwrap();
    let settings = load(Some(&path), &NO_ENV, &Overrides::new())
        .unwrap()
        .node_settings()
        .unwrap();
    assert!(settings.cluster.unwrap().link.tls.is_some(), "link TLS is on");

    let (_dir, path) = write_config(&format!("{cluster}link_tls_cert = \"node.crt\"\n"));
    let error = load(Some(&path), &NO_ENV, &Overrides::new())
        .unwrap()
        .node_settings()
        .expect_err("a certificate without its key and CA is refused");
    let keys: Vec<&str> = error.settings().iter().map(|problem| problem.key.as_str()).collect();
    assert!(
        keys.contains(&"cluster.link_tls_key") && keys.contains(&"cluster.link_tls_ca"),
        "{error}"
    );

    std::fs::write(dir.path().join("garbage.crt"), "not a certificate").unwrap();
    let (_other, path) = write_config(&format!(
        "{cluster}link_tls_cert = \"{0}/node.crt\"\nlink_tls_key = \"{0}/node.key\"\nlink_tls_ca = \"{0}/garbage.crt\"\n",
        dir.path().display()
    ));
    let error = only_error(load(Some(&path), &NO_ENV, &Overrides::new()).unwrap().node_settings());
    assert_eq!(error.key, "cluster.link_tls_cert");
    assert!(error.reason.contains("trusted certificates"), "{error}");
}
