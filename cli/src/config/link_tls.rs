//! Link TLS from `[cluster]`: `link_tls_cert`, `link_tls_key` and `link_tls_ca` (PEM files) read into a
//! [`LinkTls`]. All three or none; a file that cannot be read or parsed is a problem of its key.

use hubmesh::LinkTls;

use super::{ClusterSection, NodeConfig};

impl NodeConfig {
    /// The links' TLS: `Some(None)` when no link TLS key is set, `Some(Some(tls))` when all three are and read,
    /// `None` after reporting a problem.
    pub(super) fn link_tls(
        &self,
        section: &ClusterSection,
        problem: &mut impl FnMut(&str, String),
    ) -> Option<Option<LinkTls>> {
        let files = [
            ("cluster.link_tls_cert", &section.link_tls_cert),
            ("cluster.link_tls_key", &section.link_tls_key),
            ("cluster.link_tls_ca", &section.link_tls_ca),
        ];
        if files.iter().all(|(_, path)| path.is_none()) {
            return Some(None);
        }
        let mut contents = Vec::new();
        for (key, path) in files {
            let Some(path) = path else {
                problem(
                    key,
                    "missing: link TLS needs `link_tls_cert`, `link_tls_key` and `link_tls_ca`".into(),
                );
                continue;
            };
            let path = self.config_relative(key, path);
            match std::fs::read(&path) {
                Ok(pem) => contents.push(pem),
                Err(error) => problem(key, format!("cannot read `{}`: {error}", path.display())),
            }
        }
        let [cert, key, ca] = <[Vec<u8>; 3]>::try_from(contents).ok()?;
        match LinkTls::from_pem(&cert, &key, &ca) {
            Ok(tls) => Some(Some(tls)),
            Err(error) => {
                problem("cluster.link_tls_cert", error.to_string());
                None
            }
        }
    }
}
