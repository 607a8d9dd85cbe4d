//! The container files (`Dockerfile`, `deploy/`) checked against the node they deploy, as far as this machine
//! allows without a container runtime or a Kubernetes cluster: the manifests parse; every `HUBMESH_*` variable
//! they set is a configuration key's, and each node's environment loads and validates as `hubmesh node` would
//! load it; the ports the files publish are the ones the nodes listen on; the probe paths answer 200 on a real
//! node; seeds name the nodes; the runtime image is not root; nginx has no affinity.
//!
//! YAML is read with Python's PyYAML (`python3`, or `HUBMESH_PYTHON`), which turns each file into JSON.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use hubmesh::testing::client::http_request;
use hubmesh::testing::TestCluster;
use hubmesh_cli::config::{env_name, NodeConfig, NodeSettings, Overrides, KEYS};
use serde_json::Value;

/// The ports every deployment uses: HTTP, gossip (UDP), links (TCP).
const HTTP_PORT: u16 = 5000;
const GOSSIP_PORT: u16 = 7000;
const LINK_PORT: u16 = 7100;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// Every YAML document of `path`, as JSON.
fn yaml_documents(path: &str) -> Vec<Value> {
    let python = std::env::var("HUBMESH_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let script = "import json, sys, yaml\nprint(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let output = Command::new(&python)
        .args(["-c", script])
        .arg(repo().join(path))
        .output()
        .unwrap_or_else(|error| panic!("{python}: {error}"));
    assert!(
        output.status.success(),
        "{path} did not parse as YAML (or PyYAML is missing): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let documents: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    documents.into_iter().filter(|document| !document.is_null()).collect()
}

fn yaml(path: &str) -> Value {
    let mut documents = yaml_documents(path);
    assert_eq!(documents.len(), 1, "{path}: one document expected");
    documents.remove(0)
}

/// The environment variable names the node reads: one per configuration key, and the log format.
fn known_variables() -> Vec<String> {
    let mut names: Vec<String> = KEYS.iter().map(|key| env_name(key)).collect();
    names.push("HUBMESH_LOG_FORMAT".to_owned());
    names
}

fn assert_known(name: &str, file: &str) {
    if name.starts_with("HUBMESH_") {
        assert!(
            known_variables().iter().any(|known| known == name),
            "{file} sets {name}, which no setting reads"
        );
    }
}

/// Loads a node's configuration from `env` alone, as `hubmesh node` does, and checks it.
fn settings(env: &BTreeMap<String, String>, what: &str) -> NodeSettings {
    let config = NodeConfig::load_with_env(None, env.clone(), &Overrides::new())
        .unwrap_or_else(|error| panic!("{what}: {error}"));
    config.node_settings().unwrap_or_else(|error| panic!("{what}: {error}"))
}

fn port_of(address: &str) -> u16 {
    address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {address}"))
}

#[test]
fn the_dockerfile_builds_in_stages_and_runs_a_non_root_node() {
    let dockerfile = read("Dockerfile");
    let instructions: Vec<(String, String)> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once(' '))
        .map(|(instruction, rest)| (instruction.to_ascii_uppercase(), rest.trim().to_owned()))
        .collect();
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (instruction, _))| instruction == "FROM")
        .map(|(index, _)| index)
        .collect();
    assert!(stages.len() >= 2, "a multi-stage build");
    let runtime = &instructions[*stages.last().unwrap()..];
    let user = runtime
        .iter()
        .rev()
        .find(|(instruction, _)| instruction == "USER")
        .map(|(_, user)| user.clone());
    let user = user.expect("the runtime stage sets USER");
    assert!(!user.starts_with("root") && !user.starts_with("0"), "runs as {user}");
    let exposed: Vec<&str> = runtime
        .iter()
        .filter(|(instruction, _)| instruction == "EXPOSE")
        .flat_map(|(_, ports)| ports.split_whitespace())
        .collect();
    for port in [
        format!("{HTTP_PORT}/tcp"),
        format!("{GOSSIP_PORT}/udp"),
        format!("{LINK_PORT}/tcp"),
    ] {
        assert!(exposed.contains(&port.as_str()), "EXPOSE {port}: {exposed:?}");
    }
    let mut env = BTreeMap::new();
    for (_, assignment) in runtime.iter().filter(|(instruction, _)| instruction == "ENV") {
        let (name, value) = assignment.split_once('=').expect("ENV NAME=value");
        assert_known(name, "Dockerfile");
        env.insert(name.to_owned(), value.to_owned());
    }
    let node = settings(&env, "the image's environment");
    assert_eq!(node.listen.port(), HTTP_PORT);
    assert!(
        node.listen.ip().is_unspecified(),
        "the image listens on every interface"
    );
    let entrypoint = runtime
        .iter()
        .find(|(instruction, _)| instruction == "ENTRYPOINT")
        .expect("ENTRYPOINT");
    assert!(entrypoint.1.contains("hubmesh"), "{}", entrypoint.1);
    // What the build copies must exist: the binary's package is the workspace's `cli`.
    assert!(dockerfile.contains("-p hubmesh-cli --bin hubmesh"));
    assert!(read("cli/Cargo.toml").contains("name = \"hubmesh\""));
}

/// `${NAME:?message}` and `${NAME:-default}` as compose substitutes them, with `NAME` set to `value`.
fn substitute_compose(text: &str, value: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').map(|end| start + end).expect("closing brace");
        out.push_str(value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

#[test]
fn the_compose_file_runs_three_valid_nodes_behind_nginx_without_affinity() {
    let compose = yaml("deploy/docker-compose.yml");
    let services = compose["services"].as_object().expect("services");
    // Directives only: the comments may name what is left out.
    let nginx_conf: String = read("deploy/nginx.conf")
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .map(|line| format!("{line}\n"))
        .collect();
    for sticky in ["ip_hash", "sticky", "hash $"] {
        assert!(
            !nginx_conf.contains(sticky),
            "nginx.conf uses {sticky}: no affinity wanted"
        );
    }
    let mut names = Vec::new();
    for (name, service) in services.iter().filter(|(name, _)| name.starts_with("node-")) {
        names.push(name.clone());
        let mut env = BTreeMap::new();
        for (key, value) in service["environment"].as_object().expect("environment") {
            assert_known(key, "docker-compose.yml");
            let value = value.as_str().expect("string values");
            env.insert(key.clone(), substitute_compose(value, "a-test-secret-of-some-length"));
        }
        let node = settings(&env, name);
        assert_eq!(node.name, *name);
        assert_eq!(node.listen.port(), HTTP_PORT);
        assert!(node.rest_access_key.is_some(), "{name}: the REST API is on");
        let cluster = node.cluster.as_ref().expect("clustered");
        let ip = service["networks"]["mesh"]["ipv4_address"]
            .as_str()
            .expect("a fixed address");
        assert_eq!(
            cluster.membership.gossip_advertise.to_string(),
            format!("{ip}:{GOSSIP_PORT}")
        );
        assert_eq!(cluster.link.advertise.to_string(), format!("{ip}:{LINK_PORT}"));
        assert_eq!(cluster.membership.gossip_listen.port(), GOSSIP_PORT);
        assert_eq!(cluster.link.listen.port(), LINK_PORT);
        let seeds: Vec<&str> = cluster.membership.seeds.iter().map(String::as_str).collect();
        assert!(
            seeds.contains(&format!("{name}:{GOSSIP_PORT}").as_str()),
            "{name} among the seeds {seeds:?}"
        );
        assert!(
            nginx_conf.contains(&format!("server {name}:{HTTP_PORT};")),
            "nginx balances over {name}"
        );
        let health: Vec<&str> = service["healthcheck"]["test"]
            .as_array()
            .expect("a healthcheck")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            health.contains(&format!("http://127.0.0.1:{HTTP_PORT}").as_str()),
            "{health:?}"
        );
    }
    assert_eq!(names, ["node-1", "node-2", "node-3"]);
    assert!(services.contains_key("nginx"));
    assert!(
        nginx_conf.contains("proxy_set_header Upgrade"),
        "WebSockets pass through nginx"
    );
}

/// The manifests of `deploy/k8s`, by kind.
fn manifests() -> BTreeMap<String, Value> {
    let mut by_kind = BTreeMap::new();
    for entry in std::fs::read_dir(repo().join("deploy/k8s")).unwrap() {
        let path = entry.unwrap().path();
        let relative = path.strip_prefix(repo()).unwrap().to_string_lossy().into_owned();
        for document in yaml_documents(&relative) {
            let kind = document["kind"].as_str().expect("kind").to_owned();
            let name = document["metadata"]["name"].as_str().expect("metadata.name").to_owned();
            by_kind.insert(format!("{kind}/{name}"), document);
        }
    }
    by_kind
}

/// A container's environment with `$(VAR)` references resolved and values from Secrets filled in.
fn pod_env(container: &Value, pod: &str) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for variable in container["env"].as_array().expect("env") {
        let name = variable["name"].as_str().unwrap().to_owned();
        assert_known(&name, "statefulset.yaml");
        let value = if let Some(value) = variable["value"].as_str() {
            let mut value = value.to_owned();
            for (known, resolved) in &env {
                value = value.replace(&format!("$({known})"), resolved);
            }
            assert!(
                !value.contains("$("),
                "{name} refers to a variable defined later: {value}"
            );
            value
        } else {
            match variable["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => pod.to_owned(),
                Some("metadata.namespace") => "default".to_owned(),
                Some("status.podIP") => "10.1.2.3".to_owned(),
                Some(other) => panic!("unexpected fieldRef {other}"),
                None => {
                    assert!(
                        variable["valueFrom"]["secretKeyRef"]["key"].is_string(),
                        "{name}: a value"
                    );
                    "a-test-secret-of-some-length".to_owned()
                }
            }
        };
        env.insert(name, value);
    }
    env.retain(|name, _| name.starts_with("HUBMESH_") && name != "HUBMESH_LOG_FORMAT");
    env
}

#[test]
fn the_kubernetes_manifests_match_the_node_configuration() {
    let manifests = manifests();
    let statefulset = &manifests["StatefulSet/hubmesh"];
    let headless = &manifests["Service/hubmesh-headless"];
    let service = &manifests["Service/hubmesh"];
    let budget = &manifests["PodDisruptionBudget/hubmesh"];
    let spec = &statefulset["spec"];
    let labels = &spec["template"]["metadata"]["labels"];
    for selector in [
        &headless["spec"]["selector"],
        &service["spec"]["selector"],
        &budget["spec"]["selector"]["matchLabels"],
    ] {
        for (key, value) in selector.as_object().expect("a selector") {
            assert_eq!(&labels[key], value, "selector {key} matches the pods");
        }
    }
    assert_eq!(spec["serviceName"], "hubmesh-headless");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(
        headless["spec"]["publishNotReadyAddresses"], true,
        "seeds resolve before readiness"
    );
    assert_eq!(service["spec"]["sessionAffinity"], "None");
    assert!(budget["spec"]["maxUnavailable"].is_number() || budget["spec"]["minAvailable"].is_number());

    let pod = &spec["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    let ports: BTreeMap<&str, (u64, &str)> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|port| {
            (
                port["name"].as_str().unwrap(),
                (
                    port["containerPort"].as_u64().unwrap(),
                    port["protocol"].as_str().unwrap_or("TCP"),
                ),
            )
        })
        .collect();
    assert_eq!(ports["http"], (u64::from(HTTP_PORT), "TCP"));
    assert_eq!(ports["gossip"], (u64::from(GOSSIP_PORT), "UDP"));
    assert_eq!(ports["link"], (u64::from(LINK_PORT), "TCP"));
    for port in headless["spec"]["ports"].as_array().unwrap() {
        let name = port["name"].as_str().unwrap();
        assert_eq!(port["port"].as_u64(), Some(ports[name].0), "headless port {name}");
        assert_eq!(
            port["protocol"].as_str(),
            Some(ports[name].1),
            "headless protocol {name}"
        );
    }
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "http", "{probe} on the HTTP port");
    }
    assert!(
        container["lifecycle"]["preStop"].is_object(),
        "a preStop pause before the drain"
    );

    let replicas = spec["replicas"].as_u64().unwrap();
    for index in 0..replicas {
        let pod_name = format!("hubmesh-{index}");
        let node = settings(&pod_env(container, &pod_name), &pod_name);
        assert_eq!(node.name, pod_name);
        assert_eq!(node.listen.port(), HTTP_PORT);
        assert!(node.rest_access_key.is_some());
        let cluster = node.cluster.as_ref().expect("clustered");
        assert_eq!(
            cluster.membership.gossip_advertise.to_string(),
            format!("10.1.2.3:{GOSSIP_PORT}")
        );
        assert_eq!(cluster.link.advertise.to_string(), format!("10.1.2.3:{LINK_PORT}"));
        assert_eq!(cluster.membership.gossip_listen.port(), GOSSIP_PORT);
        assert_eq!(cluster.link.listen.port(), LINK_PORT);
        let expected: Vec<String> = (0..replicas)
            .map(|seed| format!("hubmesh-{seed}.hubmesh-headless.default.svc.cluster.local:{GOSSIP_PORT}"))
            .collect();
        assert_eq!(cluster.membership.seeds, expected, "the seeds are the pods' DNS names");
        assert!(cluster.membership.seeds.iter().all(|seed| port_of(seed) == GOSSIP_PORT));
    }
}

/// The probe paths the manifests use answer 200 on a node of a cluster once it is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_paths_answer_on_a_real_node() {
    let cluster = TestCluster::start(1, Vec::new).await.unwrap();
    let url = cluster.url(0).unwrap();
    let addr = url.strip_prefix("http://").unwrap().parse().unwrap();
    for path in ["/healthz", "/readyz"] {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let status = http_request(addr, "GET", path, &[]).await.unwrap().status;
            if status == 200 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{path}: {status}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    cluster.stop().await;
}
