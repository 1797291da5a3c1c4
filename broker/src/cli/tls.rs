//! `sluice tls-cert --out FILE --name HOST...`: writes a self-signed
//! certificate and its private key, as one PEM file (the format of HAProxy's
//! `crt`), for trying TLS and HTTP/2 at the load balancer without a CA. It
//! keeps an existing file, so a stack that restarts keeps its certificate.
//! Generated offline with rcgen (the rustls project's X.509 generator).
//! In production, give the load balancer a certificate from your CA instead.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

#[derive(Debug, Args)]
pub struct TlsCertArgs {
    /// Where to write the PEM (certificate, then private key).
    #[arg(long)]
    pub out: PathBuf,
    /// A DNS name or IP address the certificate is for (repeatable).
    #[arg(long = "name", required = true)]
    pub names: Vec<String>,
    /// Replace a file that exists (by default it is kept).
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: TlsCertArgs) -> anyhow::Result<()> {
    if a.out.exists() && !a.force {
        println!("{} exists; kept (--force replaces it)", a.out.display());
        return Ok(());
    }
    let pem = self_signed(&a.names)?;
    write(&a.out, &pem)?;
    println!(
        "wrote a self-signed certificate for {} to {}",
        a.names.join(", "),
        a.out.display()
    );
    Ok(())
}

/// A self-signed certificate for `names` and its key, as one PEM.
pub fn self_signed(names: &[String]) -> anyhow::Result<String> {
    let mut params =
        rcgen::CertificateParams::new(names.to_vec()).context("bad certificate name")?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, "Sluice self-signed (trying TLS)");
    params.distinguished_name = dn;
    let key = rcgen::KeyPair::generate().context("cannot generate a key")?;
    let cert = params
        .self_signed(&key)
        .context("cannot sign the certificate")?;
    Ok(format!("{}{}", cert.pem(), key.serialize_pem()))
}

/// Writes `pem` to `path` through a temporary file and a rename, so a
/// reader never sees half a file. Readable by all: the load balancer may
/// run as another user than this command (it is a throwaway certificate).
fn write(path: &Path, pem: &str) -> anyhow::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(pem.as_bytes())?;
    f.sync_all()?;
    drop(f);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_and_its_key_in_one_pem() {
        let pem = self_signed(&["localhost".into(), "127.0.0.1".into()]).expect("generate");
        let cert = pem
            .find("-----BEGIN CERTIFICATE-----")
            .expect("a certificate");
        let key = pem.find("-----BEGIN PRIVATE KEY-----").expect("a key");
        assert!(cert < key, "certificate first, as HAProxy reads it");
    }

    #[test]
    fn an_existing_file_is_kept_unless_forced() {
        let dir = std::env::temp_dir().join(format!("sluice-tls-{}", std::process::id()));
        let out = dir.join("sub/cert.pem");
        let args = |force| TlsCertArgs {
            out: out.clone(),
            names: vec!["localhost".into()],
            force,
        };
        run(args(false)).expect("first");
        let first = std::fs::read_to_string(&out).expect("written");
        run(args(false)).expect("second");
        assert_eq!(std::fs::read_to_string(&out).expect("kept"), first);
        run(args(true)).expect("forced");
        assert_ne!(std::fs::read_to_string(&out).expect("replaced"), first);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
