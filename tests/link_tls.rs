//! Links over mutual TLS (`LinkConfig::tls`, the `cluster.link_tls_*` settings) between real processes: three nodes
//! whose certificates a cluster CA signed form a cluster and deliver a group send across it; a fourth node, same
//! cluster id and secret but a certificate from another CA, gets no link, says why in its log and its peers' logs,
//! and does not panic. Two nodes that pin each other's self-signed certificates (no CA) link too.
//!
//! A process holds at most one ractor_cluster node, so each node runs in a child process: this test binary
//! re-executed as `tls_node_process` (ignored, so it only runs when started by name), which reads its settings
//! from `HUBMESH_TLS_NODE_*` variables, prints `NODE-READY <url>`, logs to stderr and exits when its stdin closes.
//! Certificates are made in the test with rcgen.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hubmesh::cluster::link::LinkTls;
use hubmesh::demo::demo_hub;
use hubmesh::testing::client::http_request_with_body;
use hubmesh::testing::TestClient;
use hubmesh::{ClusterSettings, LinkConfig, MembershipConfig, Node};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::json;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const ENV: &str = "HUBMESH_TLS_NODE_NAME";
const SECRET: &str = "link-tls-test-secret";
/// How long the cluster may take to form, or a log line to appear.
const LIMIT: Duration = Duration::from_secs(30);
/// A child lives at most this long, whatever happens to the test.
const NODE_LIFETIME: Duration = Duration::from_secs(180);

/// A CA that signs node certificates.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> TestResult<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate()?;
        let certificate = params.self_signed(&key)?;
        Ok(Ca {
            pem: certificate.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Writes node `name`'s certificate (naming it) and key, and this CA, into `dir`; returns their paths.
    fn node_files(&self, dir: &Path, name: &str) -> TestResult<[String; 3]> {
        let key = KeyPair::generate()?;
        let certificate = CertificateParams::new(vec![name.to_owned()])?.signed_by(&key, &self.issuer)?;
        let paths = [
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
            dir.join(format!("{name}-ca.crt")),
        ];
        std::fs::write(&paths[0], certificate.pem())?;
        std::fs::write(&paths[1], key.serialize_pem())?;
        std::fs::write(&paths[2], &self.pem)?;
        Ok(paths.map(|path| path.display().to_string()))
    }
}

/// A free loopback port for UDP (a node's gossip).
fn free_udp_port() -> TestResult<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A node process, killed when dropped; its stderr (the log) is collected as it comes.
struct NodeProcess {
    child: Child,
    url: String,
    log: Arc<Mutex<String>>,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeProcess {
    fn start(name: &str, gossip_port: u16, seed: Option<u16>, files: &[String; 3]) -> TestResult<NodeProcess> {
        let link = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "tls_node_process",
                "--exact",
                "--nocapture",
                "--ignored",
                "--test-threads=1",
            ])
            .env(ENV, name)
            .env("HUBMESH_TLS_NODE_GOSSIP", gossip_port.to_string())
            .env("HUBMESH_TLS_NODE_LINK", link.to_string())
            .env(
                "HUBMESH_TLS_NODE_SEED",
                seed.map(|port| format!("127.0.0.1:{port}")).unwrap_or_default(),
            )
            .env("HUBMESH_TLS_NODE_CERT", &files[0])
            .env("HUBMESH_TLS_NODE_KEY", &files[1])
            .env("HUBMESH_TLS_NODE_CA", &files[2])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().ok_or("no stderr")?;
        let collected = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(read) = stderr.read(&mut chunk) {
                if read == 0 {
                    break;
                }
                collected
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..read]));
            }
        });
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (ready, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest may have written `test tls_node_process ... ` before it on the same line.
                if let Some((_, url)) = line.split_once("NODE-READY ") {
                    let _ = ready.send(url.trim().to_owned());
                }
            }
        });
        let url = ready_rx
            .recv_timeout(LIMIT)
            .map_err(|_| format!("{name} did not start; its log: {}", log.lock().unwrap()))?;
        Ok(NodeProcess { child, url, log })
    }

    fn addr(&self) -> TestResult<SocketAddr> {
        Ok(self.url.strip_prefix("http://").ok_or("not an http URL")?.parse()?)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The value of metric sample `key` in the node's `/metrics`, if present.
    async fn metric(&self, key: &str) -> TestResult<Option<f64>> {
        let reply = http_request_with_body(self.addr()?, "GET", "/metrics", &[], b"").await?;
        Ok(reply.text().lines().find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == key).then(|| value.parse().ok()).flatten()
        }))
    }

    /// Waits until `what` holds of the node's log.
    async fn wait_for_log(&self, what: &str, holds: impl Fn(&str) -> bool) -> TestResult {
        let started = Instant::now();
        while !holds(&self.log()) {
            if started.elapsed() > LIMIT {
                return Err(format!("{what}: not within {LIMIT:?}; log: {}", self.log()).into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

/// Waits until every node has its links to `peers` up.
async fn wait_for_links(nodes: &[&NodeProcess], names: &[&str]) -> TestResult {
    let started = Instant::now();
    loop {
        let mut missing = Vec::new();
        for (node, name) in nodes.iter().zip(names) {
            for peer in names.iter().filter(|peer| *peer != name) {
                let key = format!("hubmesh_link_up{{peer=\"{peer}\"}}");
                if node.metric(&key).await? != Some(1.0) {
                    missing.push(format!("{name}->{peer}"));
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if started.elapsed() > LIMIT {
            let logs: Vec<String> = nodes.iter().map(|node| node.log()).collect();
            return Err(format!("links not up within {LIMIT:?}: {missing:?}; logs: {logs:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_the_cluster_ca_link_over_tls_and_a_stranger_cannot() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cluster_ca = Ca::new("hubmesh test cluster CA")?;
    let names = ["node-1", "node-2", "node-3"];
    let seed = free_udp_port()?;
    let mut nodes = Vec::new();
    for (index, name) in names.iter().enumerate() {
        let gossip = if index == 0 { seed } else { free_udp_port()? };
        let files = cluster_ca.node_files(dir.path(), name)?;
        nodes.push(NodeProcess::start(name, gossip, (index > 0).then_some(seed), &files)?);
    }
    let node_refs: Vec<&NodeProcess> = nodes.iter().collect();
    wait_for_links(&node_refs, &names).await?;

    // A group send from node-1 reaches members on node-2 and node-3: the frames crossed TLS links.
    let mut members = Vec::new();
    for node in &nodes[1..] {
        let mut member = TestClient::to(&format!("{}/hub", node.url)).connect().await?;
        member.join_group("room").await?;
        members.push(member);
    }
    let mut sender = TestClient::to(&format!("{}/hub", nodes[0].url)).connect().await?;
    sender
        .invoke_ok_keeping_others("SendToGroup", json!(["room", "over tls"]))
        .await?;
    for member in &mut members {
        let call = member
            .next_invocation_of("msg", Duration::from_secs(10))
            .await?
            .ok_or("the group send did not arrive")?;
        assert_eq!(call.value["arguments"][0], "over tls");
    }

    // A node with the same cluster id and secret but a certificate of another CA gets no link.
    let stranger_ca = Ca::new("another CA")?;
    let files = stranger_ca.node_files(dir.path(), "node-4")?;
    let stranger = NodeProcess::start("node-4", free_udp_port()?, Some(seed), &files)?;
    // node-1 dials node-4 (the lower name dials) and refuses its certificate; node-4 sees the handshake fail.
    nodes[0]
        .wait_for_log("node-1 refuses node-4's certificate", |log| {
            log.contains("TLS handshake failed") && log.contains("certificate")
        })
        .await?;
    stranger
        .wait_for_log("node-4 reports the failed handshake", |log| {
            log.contains("TLS handshake")
        })
        .await?;
    for log in [nodes[0].log(), stranger.log()] {
        let line = log
            .lines()
            .find(|line| line.contains("TLS handshake"))
            .unwrap_or_default();
        println!("logged: {line}");
    }
    for node in &nodes {
        assert_ne!(node.metric(r#"hubmesh_link_up{peer="node-4"}"#).await?, Some(1.0));
    }
    let mut everyone = node_refs.clone();
    everyone.push(&stranger);
    for node in everyone {
        let log = node.log();
        assert!(!log.contains("panicked"), "a node panicked: {log}");
    }
    let mut stranger = stranger;
    assert!(stranger.child.try_wait()?.is_none(), "node-4 keeps running");
    drop((sender, members));
    Ok(())
}

/// Without a CA: each node's own self-signed certificate, every one of them in every node's trusted file (pinned).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_pinned_self_signed_certificates_link_over_tls() -> TestResult {
    let dir = tempfile::tempdir()?;
    let names = ["node-1", "node-2"];
    let mut pinned = String::new();
    for name in names {
        let certificate = rcgen::generate_simple_self_signed(vec![name.to_owned()])?;
        std::fs::write(dir.path().join(format!("{name}.crt")), certificate.cert.pem())?;
        std::fs::write(
            dir.path().join(format!("{name}.key")),
            certificate.signing_key.serialize_pem(),
        )?;
        pinned.push_str(&certificate.cert.pem());
    }
    let trusted = dir.path().join("pinned.crt");
    std::fs::write(&trusted, pinned)?;
    let files = |name: &str| {
        [
            dir.path().join(format!("{name}.crt")).display().to_string(),
            dir.path().join(format!("{name}.key")).display().to_string(),
            trusted.display().to_string(),
        ]
    };
    let seed = free_udp_port()?;
    let first = NodeProcess::start("node-1", seed, None, &files("node-1"))?;
    let second = NodeProcess::start("node-2", free_udp_port()?, Some(seed), &files("node-2"))?;
    wait_for_links(&[&first, &second], &names).await?;
    let mut member = TestClient::to(&format!("{}/hub", second.url)).connect().await?;
    member.join_group("room").await?;
    let mut sender = TestClient::to(&format!("{}/hub", first.url)).connect().await?;
    sender
        .invoke_ok_keeping_others("SendToGroup", json!(["room", "pinned"]))
        .await?;
    let call = member
        .next_invocation_of("msg", Duration::from_secs(10))
        .await?
        .ok_or("the group send did not arrive")?;
    assert_eq!(call.value["arguments"][0], "pinned");
    Ok(())
}

/// A node of the tests above, run in a child process (see the module documentation).
#[test]
#[ignore = "a node process of the link TLS tests; runs only when one of them starts it"]
fn tls_node_process() {
    let Ok(name) = std::env::var(ENV) else {
        return;
    };
    let env = |key: &str| std::env::var(key).unwrap();
    // Exit with the parent: its end of stdin closes when it dies.
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
    std::thread::spawn(|| {
        std::thread::sleep(NODE_LIFETIME);
        std::process::exit(3);
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let read = |key: &str| std::fs::read(env(key)).unwrap();
    let tls = LinkTls::from_pem(
        &read("HUBMESH_TLS_NODE_CERT"),
        &read("HUBMESH_TLS_NODE_KEY"),
        &read("HUBMESH_TLS_NODE_CA"),
    )
    .unwrap();
    let gossip: SocketAddr = format!("127.0.0.1:{}", env("HUBMESH_TLS_NODE_GOSSIP")).parse().unwrap();
    let link: SocketAddr = format!("127.0.0.1:{}", env("HUBMESH_TLS_NODE_LINK")).parse().unwrap();
    let seed = env("HUBMESH_TLS_NODE_SEED");
    let membership = MembershipConfig::new(name.as_str(), "link-tls-test", gossip)
        .with_seeds(Some(seed).filter(|seed| !seed.is_empty()));
    let mut link = LinkConfig::new(link, SECRET);
    link.tls = Some(tls);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let handle = Node::builder()
            .name(&name)
            .hub(demo_hub())
            .listen("127.0.0.1:0")
            .cluster(ClusterSettings::real(membership, link))
            .start()
            .await
            .unwrap();
        println!("NODE-READY {}", handle.url());
        std::future::pending::<()>().await;
    });
}
