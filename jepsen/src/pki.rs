//! `--tls`: the run's own certificate authority, one broker certificate naming every node's IP
//! address (brokers present it to clients and to each other), and the harness's client certificate;
//! PEM files in the run's `tls/` directory, mounted read-only into every container at [`MOUNT`].

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// Where the containers see the run's `tls/` directory.
pub const MOUNT: &str = "/tls";

/// The run's PEM files (host paths).
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Makes the CA and the certificates for brokers at `ips`, in `dir`.
pub fn make(dir: &Path, ips: &[String]) -> Result<Pki, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let failed = |e: rcgen::Error| format!("making the run's certificates: {e}");
    let ca_key = KeyPair::generate().map_err(failed)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "Keel Jepsen run CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_pem = ca.self_signed(&ca_key).map_err(failed)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |names: Vec<String>, purposes: Vec<ExtendedKeyUsagePurpose>| -> Result<(String, String), String> {
        let key = KeyPair::generate().map_err(failed)?;
        let mut params = CertificateParams::new(names.clone()).map_err(failed)?;
        params.distinguished_name.push(DnType::CommonName, names[0].as_str());
        params.extended_key_usages = purposes;
        Ok((params.signed_by(&key, &issuer).map_err(failed)?.pem(), key.serialize_pem()))
    };
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let (broker_cert, broker_key) = leaf(ips.to_vec(), vec![ServerAuth, ClientAuth])?;
    let (client_cert, client_key) = leaf(vec!["jepsen-client".to_owned()], vec![ClientAuth])?;
    let write = |name: &str, text: &str| -> Result<PathBuf, String> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    };
    write("broker.pem", &broker_cert)?;
    write("broker.key", &broker_key)?;
    Ok(Pki {
        dir: dir.to_owned(),
        ca: write("ca.pem", &ca_pem)?,
        client_cert: write("client.pem", &client_cert)?,
        client_key: write("client.key", &client_key)?,
    })
}

/// The environment that turns mutual TLS on in a broker container.
pub fn broker_env() -> Vec<String> {
    vec![
        format!("KEEL_TLS_CERT={MOUNT}/broker.pem"),
        format!("KEEL_TLS_KEY={MOUNT}/broker.key"),
        format!("KEEL_TLS_CA={MOUNT}/ca.pem"),
        "KEEL_TLS_CLIENT_AUTH=true".to_owned(),
    ]
}
