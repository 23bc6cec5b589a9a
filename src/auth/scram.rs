//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as a pure state machine: credential derivation, and the
//! server's side of the exchange (ADR 0029). No I/O, clocks or randomness: the server nonce and the
//! salt come in as arguments.
//!
//! What is stored per user ([`Credential`]) is what Kafka stores: the salt, the iteration count,
//! StoredKey = H(HMAC(SaltedPassword, "Client Key")) and ServerKey = HMAC(SaltedPassword, "Server
//! Key"). Neither the password nor SaltedPassword (which would log in by itself) is kept.
//!
//! The exchange: `client-first` (`n,,n=user,r=client-nonce`) → [`ServerFirst::start`] answers
//! `r=client-nonce+server-nonce,s=salt,i=iterations`; `client-final` (`c=biws,r=nonce,p=proof`) →
//! [`ServerFirst::finish`] checks the proof and answers `v=server-signature`, or fails. An unknown
//! user gets a made-up salt and fails at the proof, like a wrong password, so the exchange does not
//! tell which names exist. Channel binding is refused (`p=` flag), as Kafka does.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The mechanism's name on the wire.
pub const MECHANISM: &str = "SCRAM-SHA-256";
/// Kafka's minimum, and what `keel user create` uses.
pub const ITERATIONS_MIN: u32 = 4096;
/// Above this, deriving a key costs a login seconds of CPU: refused as a denial of service.
pub const ITERATIONS_MAX: u32 = 1 << 20;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// What a broker keeps of one user's password.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Credential {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

impl Credential {
    /// The credential of `password` with `salt` and `iterations` (what the client computes and sends:
    /// the password never leaves it).
    pub fn derive(password: &str, salt: &[u8], iterations: u32) -> Credential {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        Credential {
            salt: salt.to_vec(),
            iterations,
            stored_key: Sha256::digest(client_key).to_vec(),
            server_key: hmac(&salted, b"Server Key").to_vec(),
        }
    }

    /// Whether the credential can be stored: a salt, a sane iteration count, keys of SHA-256's size.
    pub fn check(&self) -> Result<(), String> {
        if self.salt.len() < 8 {
            return Err(format!("a salt of {} bytes is too short (at least 8)", self.salt.len()));
        }
        if !(ITERATIONS_MIN..=ITERATIONS_MAX).contains(&self.iterations) {
            return Err(format!("{} iterations is outside {ITERATIONS_MIN}..={ITERATIONS_MAX}", self.iterations));
        }
        if self.stored_key.len() != 32 || self.server_key.len() != 32 {
            return Err("the keys must be 32 bytes (SHA-256)".to_owned());
        }
        Ok(())
    }
}

/// Why an exchange failed: the client is told [`ScramError::wire`], never more.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(String),
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("authentication failed for user {0:?}")]
    Failed(String),
}

impl ScramError {
    /// The RFC 5802 `e=` value a server sends.
    pub fn wire(&self) -> &'static str {
        match self {
            ScramError::Malformed(_) => "e=invalid-encoding",
            ScramError::ChannelBinding => "e=channel-bindings-dont-match",
            ScramError::Failed(_) => "e=invalid-proof",
        }
    }
}

/// `n=` and `r=` of a `client-first-message`, with its bare part (the RFC's AuthMessage starts with it).
struct ClientFirst {
    user: String,
    nonce: String,
    bare: String,
    gs2_header: String,
}

/// A SASL name: `=2C` is `,` and `=3D` is `=`; any other `=` is malformed.
fn sasl_name(text: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::Malformed(format!("bad escape in {text:?}"))),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

fn parse_client_first(message: &str) -> Result<ClientFirst, ScramError> {
    let malformed = || ScramError::Malformed(format!("client-first {message:?}"));
    let mut parts = message.splitn(3, ',');
    let (flag, authzid, bare) =
        (parts.next().ok_or_else(malformed)?, parts.next().ok_or_else(malformed)?, parts.next().ok_or_else(malformed)?);
    match flag {
        "n" | "y" => {}
        flag if flag.starts_with("p=") => return Err(ScramError::ChannelBinding),
        _ => return Err(malformed()),
    }
    if !authzid.is_empty() && !authzid.starts_with("a=") {
        return Err(malformed());
    }
    let mut attributes = bare.split(',');
    let user = attributes.next().and_then(|a| a.strip_prefix("n=")).ok_or_else(malformed)?;
    let nonce = attributes.next().and_then(|a| a.strip_prefix("r=")).ok_or_else(malformed)?;
    if nonce.is_empty() || !nonce.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',') {
        return Err(malformed());
    }
    Ok(ClientFirst {
        user: sasl_name(user)?,
        nonce: nonce.to_owned(),
        bare: bare.to_owned(),
        gs2_header: format!("{flag},{authzid},"),
    })
}

/// The server between its first message and the client's final one.
#[derive(Debug)]
pub struct ServerFirst {
    user: String,
    /// `None` for an unknown user: the exchange goes on and fails at the proof.
    credential: Option<Credential>,
    nonce: String,
    client_first_bare: String,
    gs2_header: String,
    message: String,
}

impl ServerFirst {
    /// Answers `client_first`: `lookup` gives the user's credential, `server_nonce` is fresh
    /// printable randomness (no `,`), and `decoy_salt` is the salt shown for an unknown user (derive
    /// it from the name and a broker secret so it does not change between attempts).
    pub fn start(
        client_first: &str,
        lookup: impl FnOnce(&str) -> Option<Credential>,
        server_nonce: &str,
        decoy_salt: &[u8],
    ) -> Result<ServerFirst, ScramError> {
        let first = parse_client_first(client_first)?;
        let credential = lookup(&first.user);
        let (salt, iterations) = match &credential {
            Some(credential) => (credential.salt.clone(), credential.iterations),
            None => (decoy_salt.to_vec(), ITERATIONS_MIN),
        };
        let nonce = format!("{}{server_nonce}", first.nonce);
        let message = format!("r={nonce},s={},i={iterations}", B64.encode(salt));
        Ok(ServerFirst {
            user: first.user,
            credential,
            nonce,
            client_first_bare: first.bare,
            gs2_header: first.gs2_header,
            message,
        })
    }

    /// The `server-first-message` to send.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The user the client named.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Checks `client_final`; on success the authenticated user and the `server-final-message`.
    pub fn finish(self, client_final: &str) -> Result<(String, String), ScramError> {
        let malformed = || ScramError::Malformed(format!("client-final {client_final:?}"));
        let (without_proof, proof) = client_final.rsplit_once(",p=").ok_or_else(malformed)?;
        let mut attributes = without_proof.split(',');
        let binding = attributes.next().and_then(|a| a.strip_prefix("c=")).ok_or_else(malformed)?;
        let nonce = attributes.next().and_then(|a| a.strip_prefix("r=")).ok_or_else(malformed)?;
        if B64.decode(binding).map_err(|_| malformed())? != self.gs2_header.as_bytes() {
            return Err(ScramError::ChannelBinding);
        }
        if nonce != self.nonce {
            return Err(ScramError::Failed(self.user));
        }
        let proof = B64.decode(proof).map_err(|_| malformed())?;
        let auth_message = format!("{},{},{without_proof}", self.client_first_bare, self.message);
        let Some(credential) = self.credential else { return Err(ScramError::Failed(self.user)) };
        let signature = hmac(&credential.stored_key, auth_message.as_bytes());
        if proof.len() != signature.len() {
            return Err(ScramError::Failed(self.user));
        }
        let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
        let computed: [u8; 32] = Sha256::digest(&client_key).into();
        // Constant time: the comparison does not tell how many leading bytes matched.
        let matches = computed.iter().zip(&credential.stored_key).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0;
        if !matches {
            return Err(ScramError::Failed(self.user));
        }
        let server_signature = hmac(&credential.server_key, auth_message.as_bytes());
        Ok((self.user, format!("v={}", B64.encode(server_signature))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677, section 3: user "user", password "pencil".
    const SALT_B64: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str =
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn pencil() -> Credential {
        Credential::derive("pencil", &B64.decode(SALT_B64).unwrap(), 4096)
    }

    #[test]
    fn the_rfc_7677_exchange_succeeds() {
        let server =
            ServerFirst::start(CLIENT_FIRST, |user| (user == "user").then(pencil), SERVER_NONCE, b"decoy").unwrap();
        assert_eq!(server.message(), SERVER_FIRST);
        assert_eq!(server.finish(CLIENT_FINAL).unwrap(), ("user".to_owned(), SERVER_FINAL.to_owned()));
        assert_eq!(pencil().check(), Ok(()));
    }

    #[test]
    fn a_wrong_password_an_unknown_user_and_a_changed_nonce_fail_alike() {
        let wrong = Credential::derive("pen", &B64.decode(SALT_B64).unwrap(), 4096);
        let server = ServerFirst::start(CLIENT_FIRST, |_| Some(wrong), SERVER_NONCE, b"decoy").unwrap();
        assert_eq!(server.finish(CLIENT_FINAL), Err(ScramError::Failed("user".into())));
        let unknown = ServerFirst::start(CLIENT_FIRST, |_| None, SERVER_NONCE, b"decoy-salt").unwrap();
        assert!(unknown.message().contains(&format!("s={}", B64.encode(b"decoy-salt"))), "{}", unknown.message());
        assert_eq!(unknown.finish(CLIENT_FINAL), Err(ScramError::Failed("user".into())));
        let server = ServerFirst::start(CLIENT_FIRST, |_| Some(pencil()), "other", b"decoy").unwrap();
        assert_eq!(server.finish(CLIENT_FINAL), Err(ScramError::Failed("user".into())));
    }

    #[test]
    fn malformed_messages_and_channel_binding_are_refused() {
        for bad in ["", "n,,", "x,,n=user,r=abc", "n,,r=abc", "n,,n=us=er,r=abc", "n,,n=user,r="] {
            let error = ServerFirst::start(bad, |_| Some(pencil()), SERVER_NONCE, b"d").unwrap_err();
            assert!(matches!(error, ScramError::Malformed(_)), "{bad:?}: {error:?}");
        }
        let bound = ServerFirst::start("p=tls-unique,,n=user,r=abc", |_| Some(pencil()), "x", b"d").unwrap_err();
        assert_eq!(bound, ScramError::ChannelBinding);
        let server = ServerFirst::start(CLIENT_FIRST, |_| Some(pencil()), SERVER_NONCE, b"d").unwrap();
        assert!(matches!(server.finish("c=biws,r=x"), Err(ScramError::Malformed(_))));
        assert_eq!(sasl_name("a=2Cb=3Dc").unwrap(), "a,b=c");
    }

    #[test]
    fn credentials_outside_the_bounds_are_refused() {
        let mut credential = pencil();
        credential.iterations = 1000;
        assert!(credential.check().unwrap_err().contains("iterations"));
        let short = Credential { salt: vec![1; 4], ..pencil() };
        assert!(short.check().unwrap_err().contains("salt"));
    }
}
