//! An in-process token server (distribution token auth): signs RS256 JWTs with a test key
//! whose self-signed certificate is the registry's `rootcertbundle`, with a short `expires_in`,
//! and counts what it issues.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::sign::Signer;
use openssl::x509::{X509, X509NameBuilder};
use serde_json::json;

pub const SERVICE: &str = "test-registry";
pub const ISSUER: &str = "test-token-issuer";

struct Key {
    private: PKey<Private>,
    cert: X509,
}

impl Key {
    fn new() -> Self {
        let private = PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("pkey");
        let mut name = X509NameBuilder::new().expect("name");
        name.append_entry_by_text("CN", "test token signer")
            .expect("cn");
        let name = name.build();
        let mut cert = X509::builder().expect("x509");
        cert.set_version(2).expect("version");
        let serial = BigNum::from_u32(rand_u32()).and_then(|n| n.to_asn1_integer());
        cert.set_serial_number(&serial.expect("serial"))
            .expect("serial");
        cert.set_subject_name(&name).expect("subject");
        cert.set_issuer_name(&name).expect("issuer");
        cert.set_pubkey(&private).expect("pubkey");
        cert.set_not_before(&Asn1Time::days_from_now(0).expect("now"))
            .expect("not before");
        cert.set_not_after(&Asn1Time::days_from_now(1).expect("tomorrow"))
            .expect("not after");
        cert.sign(&private, MessageDigest::sha256()).expect("sign");
        Self {
            private,
            cert: cert.build(),
        }
    }
}

fn rand_u32() -> u32 {
    let id = uuid::Uuid::new_v4();
    u32::from_le_bytes(id.as_bytes()[..4].try_into().expect("4 bytes"))
}

#[derive(Default)]
pub struct Issued {
    /// Tokens handed out.
    pub tokens: AtomicUsize,
    /// Token requests that carried a basic login.
    pub with_login: AtomicUsize,
}

struct Inner {
    key: Mutex<Key>,
    expires_in: AtomicU64,
    issued: Arc<Issued>,
}

pub struct TokenServer {
    pub realm: String,
    pub issued: Arc<Issued>,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl TokenServer {
    pub async fn start(expires_in: u64) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("token port");
        let realm = format!("http://{}/token", listener.local_addr().expect("addr"));
        let issued = Arc::new(Issued::default());
        let inner = Arc::new(Inner {
            key: Mutex::new(Key::new()),
            expires_in: AtomicU64::new(expires_in),
            issued: issued.clone(),
        });
        let app = axum::Router::new()
            .route("/token", axum::routing::get(issue))
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            realm,
            issued,
            inner,
            task,
        }
    }

    pub fn tokens(&self) -> usize {
        self.issued.tokens.load(Ordering::SeqCst)
    }

    /// The current signing certificate, PEM, for the registry's `rootcertbundle`.
    pub fn cert_pem(&self) -> Vec<u8> {
        self.inner
            .key
            .lock()
            .expect("key")
            .cert
            .to_pem()
            .expect("pem")
    }

    /// A new signing key: tokens signed before are no longer trusted by a registry restarted
    /// with the new `cert_pem`.
    pub fn rotate_key(&self) {
        *self.inner.key.lock().expect("key") = Key::new();
    }

    /// The `auth:` section of a registry config trusting this server, certificate at `bundle`.
    pub fn registry_auth(&self, bundle: &std::path::Path) -> String {
        format!(
            "  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.realm,
            bundle.display()
        )
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn issue(
    State(inner): State<Arc<Inner>>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> axum::Json<serde_json::Value> {
    inner.issued.tokens.fetch_add(1, Ordering::SeqCst);
    if headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Basic "))
    {
        inner.issued.with_login.fetch_add(1, Ordering::SeqCst);
    }
    // scope=repository:<name>:<actions>, each granted as asked.
    let access: Vec<serde_json::Value> = query
        .iter()
        .filter(|(k, _)| k == "scope")
        .filter_map(|(_, scope)| {
            let (kind, rest) = scope.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            Some(json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    let expires_in = inner.expires_in.load(Ordering::SeqCst);
    let now = time::OffsetDateTime::now_utc();
    let key = inner.key.lock().expect("key");
    let header = json!({
        "typ": "JWT",
        "alg": "RS256",
        "x5c": [STANDARD.encode(key.cert.to_der().expect("der"))],
    });
    let claims = json!({
        "iss": ISSUER,
        "sub": "builder",
        "aud": SERVICE,
        "exp": now.unix_timestamp() + expires_in as i64,
        "nbf": now.unix_timestamp() - 1,
        "iat": now.unix_timestamp(),
        "jti": uuid::Uuid::new_v4().to_string(),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut signer = Signer::new(MessageDigest::sha256(), &key.private).expect("signer");
    let signature = signer
        .sign_oneshot_to_vec(signing_input.as_bytes())
        .expect("signature");
    let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature));
    let issued_at = now
        .format(&time::format_description::well_known::Rfc3339)
        .expect("rfc3339");
    axum::Json(json!({"token": token, "expires_in": expires_in, "issued_at": issued_at}))
}
