//! The README's nginx configuration ("Behind a load balancer"), run for real: nginx (Debian's `nginx-light`,
//! installed by `tests/nginx/install-nginx.sh` when missing) in front of three test servers forming one cluster,
//! round robin without affinity, and the official client's hub files (`tests/node`) through it over all three
//! transports and both protocols, stateful reconnect included.
//!
//! The configuration is taken from README.md's ```nginx block, with the three upstream servers and the listen
//! port replaced by the test's own, so the README shows what is tested. Needs Node.js and npm like
//! `tests/official_client.rs`. Everything runs on 127.0.0.1; every wait is bounded.

#[path = "common/npm.rs"]
mod npm;
#[path = "common/process.rs"]
mod process;

use std::error::Error;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hubmesh::testing::TestHubCluster;
use process::{kill_tree, own_process_group, wait_bounded};

type TestResult<T = ()> = Result<T, Box<dyn Error>>;

const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
const NODE_TIMEOUT: Duration = Duration::from_secs(600);

/// The hub files of the official suite: they use the hubs only (the raw `/echo` endpoint is not clustered).
const HUB_FILES: &[&str] = &["hub-connection.test.mjs", "negotiate.test.mjs"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn nginx_binary() -> TestResult<PathBuf> {
    for candidate in ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"] {
        if Path::new(candidate).is_file() {
            return Ok(PathBuf::from(candidate));
        }
    }
    let script = root().join("tests").join("nginx").join("install-nginx.sh");
    let mut child = own_process_group(Command::new("sh").arg(&script)).spawn()?;
    let status = wait_bounded(&mut child, INSTALL_TIMEOUT, "installing nginx")?;
    if !status.success() || !Path::new("/usr/sbin/nginx").is_file() {
        return Err(format!("could not install nginx ({status}); see the messages above").into());
    }
    Ok(PathBuf::from("/usr/sbin/nginx"))
}

/// README.md's nginx block, with `servers` as its upstream and `port` as its listen port.
fn readme_config(servers: &[SocketAddr], port: u16) -> TestResult<String> {
    let readme = std::fs::read_to_string(root().join("README.md"))?;
    let start = readme.find("```nginx\n").ok_or("README.md has no ```nginx block")? + "```nginx\n".len();
    let length = readme[start..].find("```").ok_or("unterminated ```nginx block")?;
    let block = &readme[start..start + length];
    let mut config = String::new();
    let mut servers_written = false;
    for line in block.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("server 127.0.0.1:") {
            if !servers_written {
                for server in servers {
                    config.push_str(&format!("    server {server};\n"));
                }
                servers_written = true;
            }
        } else if trimmed.starts_with("listen ") {
            config.push_str(&format!("    listen 127.0.0.1:{port};\n"));
        } else {
            config.push_str(line);
            config.push('\n');
        }
    }
    if !servers_written {
        return Err("the README's nginx block lists no upstream server".into());
    }
    Ok(config)
}

/// A free loopback port (bound, then released for nginx).
fn free_port() -> TestResult<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Nginx {
    child: Child,
    _dir: TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        kill_tree(&mut self.child);
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start_nginx(binary: &Path, servers: &[SocketAddr], port: u16) -> TestResult<Nginx> {
    let dir = std::env::temp_dir().join(format!("hubmesh-nginx-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let dir = TempDir(dir);
    let path = dir.0.display().to_string();
    let config = format!(
        "daemon off;\nmaster_process off;\npid {path}/nginx.pid;\nerror_log {path}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n access_log off;\n client_body_temp_path {path}/body;\n proxy_temp_path {path}/proxy;\n\
         fastcgi_temp_path {path}/fastcgi;\n uwsgi_temp_path {path}/uwsgi;\n scgi_temp_path {path}/scgi;\n{}}}\n",
        readme_config(servers, port)?
    );
    let file = dir.0.join("nginx.conf");
    std::fs::write(&file, config)?;
    let child = own_process_group(
        Command::new(binary)
            .arg("-p")
            .arg(&dir.0)
            .arg("-c")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .spawn()?;
    let mut nginx = Nginx { child, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = nginx.child.try_wait()? {
            let log = std::fs::read_to_string(nginx._dir.0.join("error.log")).unwrap_or_default();
            return Err(format!("nginx exited with {status}: {log}").into());
        }
        if Instant::now() >= deadline {
            return Err("nginx did not listen within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(nginx)
}

#[test]
fn official_client_through_nginx_without_affinity_over_three_nodes() -> TestResult {
    let binary = nginx_binary()?;
    let dir = npm::ensure_installed()?;
    let cluster = TestHubCluster::start(3)?;
    let servers = cluster.addrs()?;
    let port = free_port()?;
    let _nginx = start_nginx(&binary, &servers, port)?;
    let url = format!("http://127.0.0.1:{port}");
    println!("nginx at {url} in front of {}", cluster.urls().join(" "));
    let runs: [(&str, Vec<&str>); 2] = [
        ("WebSockets,ServerSentEvents,LongPolling", HUB_FILES.to_vec()),
        ("WebSockets", vec!["stateful-reconnect.test.mjs"]),
    ];
    let mut failures = Vec::new();
    for (transports, files) in runs {
        let mut child = own_process_group(
            Command::new("node")
                .args(["--test", "--test-concurrency=1", "--test-reporter=spec"])
                .args(&files)
                .current_dir(&dir)
                .env("HUBMESH_TEST_URL", &url)
                .env_remove("HUBMESH_TEST_HTTPS_URL")
                .env("HUBMESH_TEST_TRANSPORTS", transports),
        )
        .spawn()?;
        let status = wait_bounded(&mut child, NODE_TIMEOUT, "`node --test` through nginx")?;
        if !status.success() {
            failures.push(format!("over {transports}: {status}"));
        }
    }
    assert!(
        failures.is_empty(),
        "the official client failed through nginx ({}); see the node output above",
        failures.join("; ")
    );
    Ok(())
}
