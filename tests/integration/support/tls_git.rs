//! An https git host for tests: a TLS terminator (a test CA's certificate for given names) in
//! front of the local `git http-backend` server, recording every connection and the server
//! name (SNI) each TLS handshake asked for. Plus a listener that only counts connections, to
//! show that nothing went to an address.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509, X509NameBuilder};
use tokio::net::{TcpListener, TcpStream};

/// A CA made for one test, and its certificate as a PEM file (for `request.git_ca_file`).
pub struct TestCa {
    cert: X509,
    key: PKey<Private>,
    dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new() -> Self {
        let key = ec_key();
        let name = x509_name("image-builder test CA");
        let mut cert = X509::builder().expect("x509");
        cert.set_version(2).expect("version");
        cert.set_serial_number(&serial()).expect("serial");
        cert.set_subject_name(&name).expect("subject");
        cert.set_issuer_name(&name).expect("issuer");
        cert.set_pubkey(&key).expect("pubkey");
        set_validity(&mut cert);
        let ca = BasicConstraints::new().critical().ca().build().expect("bc");
        cert.append_extension(ca).expect("bc");
        let usage = KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()
            .expect("ku");
        cert.append_extension(usage).expect("ku");
        cert.sign(&key, MessageDigest::sha256()).expect("sign");
        let cert = cert.build();
        let dir = tempfile::tempdir().expect("ca dir");
        std::fs::write(dir.path().join("ca.pem"), cert.to_pem().expect("ca pem"))
            .expect("write ca");
        Self { cert, key, dir }
    }

    pub fn pem_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A server certificate for DNS `names` only (no IP address), as a TLS identity.
    fn identity(&self, names: &[&str]) -> native_tls::Identity {
        let key = ec_key();
        let mut cert = X509::builder().expect("x509");
        cert.set_version(2).expect("version");
        cert.set_serial_number(&serial()).expect("serial");
        cert.set_subject_name(&x509_name(names.first().copied().unwrap_or("server")))
            .expect("subject");
        cert.set_issuer_name(self.cert.subject_name())
            .expect("issuer");
        cert.set_pubkey(&key).expect("pubkey");
        set_validity(&mut cert);
        let mut san = SubjectAlternativeName::new();
        for name in names {
            san.dns(name);
        }
        let san = san
            .build(&cert.x509v3_context(Some(&self.cert), None))
            .expect("san");
        cert.append_extension(san).expect("san");
        let eku = ExtendedKeyUsage::new().server_auth().build().expect("eku");
        cert.append_extension(eku).expect("eku");
        cert.sign(&self.key, MessageDigest::sha256()).expect("sign");
        let pem = cert.build().to_pem().expect("pem");
        let key = key.private_key_to_pem_pkcs8().expect("key pem");
        native_tls::Identity::from_pkcs8(&pem, &key).expect("identity")
    }
}

fn ec_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("curve");
    PKey::from_ec_key(EcKey::generate(&group).expect("ec key")).expect("pkey")
}

fn x509_name(cn: &str) -> openssl::x509::X509Name {
    let mut name = X509NameBuilder::new().expect("name");
    name.append_entry_by_nid(Nid::COMMONNAME, cn).expect("cn");
    name.build()
}

fn serial() -> openssl::asn1::Asn1Integer {
    let mut n = BigNum::new().expect("bn");
    n.rand(64, openssl::bn::MsbOption::MAYBE_ZERO, false)
        .expect("rand");
    n.to_asn1_integer().expect("serial")
}

fn set_validity(cert: &mut openssl::x509::X509Builder) {
    cert.set_not_before(&Asn1Time::days_from_now(0).expect("now"))
        .expect("not before");
    cert.set_not_after(&Asn1Time::days_from_now(2).expect("later"))
        .expect("not after");
}

/// TLS on `addr` for a CA's certificate, passing the plaintext to `backend` (host:port).
pub struct TlsGitHost {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    server_names: Arc<Mutex<Vec<Option<String>>>>,
    /// After the handshake, send nothing at all (a host that stalls).
    pub silent: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsGitHost {
    pub async fn start(
        listener: TcpListener,
        ca: &TestCa,
        names: &[&str],
        backend: String,
    ) -> Self {
        let addr = listener.local_addr().expect("addr");
        let acceptor = native_tls::TlsAcceptor::new(ca.identity(names)).expect("acceptor");
        let acceptor = tokio_native_tls::TlsAcceptor::from(acceptor);
        let connections = Arc::new(AtomicUsize::new(0));
        let server_names = Arc::new(Mutex::new(Vec::new()));
        let silent = Arc::new(AtomicBool::new(false));
        let (count, seen, quiet) = (connections.clone(), server_names.clone(), silent.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (acceptor, backend, seen, quiet) = (
                    acceptor.clone(),
                    backend.clone(),
                    seen.clone(),
                    quiet.clone(),
                );
                tokio::spawn(async move {
                    let name = peek_server_name(&tcp).await;
                    seen.lock().expect("names").push(name);
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if quiet.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_secs(600)).await;
                        return;
                    }
                    if let Ok(mut plain) = TcpStream::connect(&backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    }
                });
            }
        });
        Self {
            addr,
            connections,
            server_names,
            silent,
            task,
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The SNI of each connection, in order (`None`: no SNI or not a ClientHello).
    pub fn server_names(&self) -> Vec<Option<String>> {
        self.server_names.lock().expect("names").clone()
    }
}

impl Drop for TlsGitHost {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts the connections that reach a listener, and does nothing else with them.
pub struct Tally {
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Tally {
    pub fn start(listener: TcpListener) -> Self {
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(conn);
            }
        });
        Self { connections, task }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The server name of the TLS ClientHello waiting on `tcp`, read without consuming it.
async fn peek_server_name(tcp: &TcpStream) -> Option<String> {
    let mut buf = vec![0u8; 8192];
    for _ in 0..200 {
        let n = tcp.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        if n >= 5 {
            let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
            if buf[0] != 0x16 {
                return None;
            }
            if n >= 5 + len {
                return client_hello_server_name(&buf[5..5 + len]);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// The host_name of the server_name extension (RFC 6066) of a ClientHello handshake message.
fn client_hello_server_name(hello: &[u8]) -> Option<String> {
    let u16_at = |at: usize| -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([
            *hello.get(at)?,
            *hello.get(at + 1)?,
        ])))
    };
    if *hello.first()? != 1 {
        return None;
    }
    // type(1) length(3) version(2) random(32)
    let mut at = 4 + 2 + 32;
    at += 1 + usize::from(*hello.get(at)?); // session id
    at += 2 + u16_at(at)?; // cipher suites
    at += 1 + usize::from(*hello.get(at)?); // compression methods
    let end = at + 2 + u16_at(at)?;
    at += 2;
    while at + 4 <= end {
        let (kind, len) = (u16_at(at)?, u16_at(at + 2)?);
        at += 4;
        if kind == 0 {
            // list length(2), name type(1), name length(2), name
            let name_len = u16_at(at + 3)?;
            let name = hello.get(at + 5..at + 5 + name_len)?;
            return String::from_utf8(name.to_vec()).ok();
        }
        at += len;
    }
    None
}
