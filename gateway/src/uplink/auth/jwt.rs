//! The client assertion of SMART Backend Services (RFC 7523 §2.2, RFC 7521): a JWS signed
//! with the gateway's private key (RS384 or ES384, with `ring`), and the public key as a JWK
//! for the JWKS the server is given (RFC 7517, RFC 7518 §6), with its RFC 7638 thumbprint.
//!
//! The private key never leaves this module; `Debug` names only the algorithm.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use serde_json::{json, Value as Json};

use crate::config::JwtAlgorithm;

/// Lifetime of a client assertion: SMART allows at most five minutes.
pub const ASSERTION_LIFETIME_S: i64 = 300;

/// Why a key cannot sign client assertions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No PEM private key in the file.
    #[error("no PEM private key in the file (expected -----BEGIN PRIVATE KEY-----)")]
    Pem,
    /// A SEC1 `EC PRIVATE KEY`, which ring reads only as PKCS#8.
    #[error("an \"EC PRIVATE KEY\" (SEC1) file; convert it with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.p8`")]
    Sec1,
    /// A key of neither kind.
    #[error("neither an RSA key of 2048 to 8192 bits (RS384) nor an EC key on P-384 (ES384): {0}")]
    Unsupported(String),
    /// The key is of another type than the configured algorithm needs.
    #[error("algorithm {wanted} needs {needs}, the file holds {has}")]
    Mismatch {
        /// The configured algorithm.
        wanted: &'static str,
        /// The key type it needs.
        needs: &'static str,
        /// The key type found.
        has: &'static str,
    },
}

enum Inner {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// A private key that signs client assertions.
pub struct SigningKey {
    inner: Inner,
    rng: SystemRandom,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SigningKey({}, private part redacted)",
            self.algorithm().as_str()
        )
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl SigningKey {
    /// Reads a PEM private key: PKCS#8 (RSA or P-384 EC) or PKCS#1 (RSA). With `wanted`, the
    /// key must be the type that algorithm needs.
    pub fn from_pem(pem: &[u8], wanted: Option<JwtAlgorithm>) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|_| KeyError::Pem)?;
        let inner = match &der {
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der())
                .map(Inner::Rsa)
                .map_err(|e| KeyError::Unsupported(e.to_string()))?,
            PrivateKeyDer::Sec1(_) => return Err(KeyError::Sec1),
            PrivateKeyDer::Pkcs8(k) => {
                let bytes = k.secret_pkcs8_der();
                match RsaKeyPair::from_pkcs8(bytes) {
                    Ok(k) => Inner::Rsa(k),
                    Err(rsa) => EcdsaKeyPair::from_pkcs8(
                        &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                        bytes,
                        &rng,
                    )
                    .map(Inner::Ec)
                    .map_err(|ec| {
                        KeyError::Unsupported(format!("as RSA: {rsa}; as P-384: {ec}"))
                    })?,
                }
            }
            _ => return Err(KeyError::Pem),
        };
        let key = SigningKey { inner, rng };
        if let Some(wanted) = wanted {
            if wanted != key.algorithm() {
                let kind = |a: JwtAlgorithm| match a {
                    JwtAlgorithm::RS384 => "an RSA key",
                    JwtAlgorithm::ES384 => "a P-384 EC key",
                };
                return Err(KeyError::Mismatch {
                    wanted: wanted.as_str(),
                    needs: kind(wanted),
                    has: kind(key.algorithm()),
                });
            }
        }
        Ok(key)
    }

    /// RS384 for an RSA key, ES384 for a P-384 key.
    pub fn algorithm(&self) -> JwtAlgorithm {
        match self.inner {
            Inner::Rsa(_) => JwtAlgorithm::RS384,
            Inner::Ec(_) => JwtAlgorithm::ES384,
        }
    }

    /// The public key's required JWK members, base64url-encoded, in the lexicographic order
    /// RFC 7638 asks for.
    fn members(&self) -> Vec<(&'static str, String)> {
        match &self.inner {
            Inner::Rsa(k) => {
                let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(k.public());
                vec![("e", b64(&c.e)), ("kty", "RSA".into()), ("n", b64(&c.n))]
            }
            Inner::Ec(k) => {
                // Uncompressed point: 0x04, x, y (48 bytes each on P-384).
                let point = k.public_key().as_ref();
                let (x, y) = point
                    .get(1..)
                    .unwrap_or_default()
                    .split_at(point.len().saturating_sub(1) / 2);
                vec![
                    ("crv", "P-384".into()),
                    ("kty", "EC".into()),
                    ("x", b64(x)),
                    ("y", b64(y)),
                ]
            }
        }
    }

    /// The RFC 7638 JWK thumbprint (SHA-256, base64url): the default `kid`.
    pub fn thumbprint(&self) -> String {
        let canonical = self
            .members()
            .iter()
            .map(|(k, v)| format!("\"{k}\":\"{v}\""))
            .collect::<Vec<_>>()
            .join(",");
        let digest =
            ring::digest::digest(&ring::digest::SHA256, format!("{{{canonical}}}").as_bytes());
        b64(digest.as_ref())
    }

    /// The public key as a JWK with `kid`, `alg`, `use` and `key_ops`, for the JWKS.
    pub fn public_jwk(&self, kid: &str) -> Json {
        let mut jwk = serde_json::Map::new();
        for (k, v) in self.members() {
            jwk.insert(k.into(), Json::String(v));
        }
        jwk.insert("kid".into(), json!(kid));
        jwk.insert("alg".into(), json!(self.algorithm().as_str()));
        jwk.insert("use".into(), json!("sig"));
        jwk.insert("key_ops".into(), json!(["verify"]));
        Json::Object(jwk)
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, ring::error::Unspecified> {
        match &self.inner {
            Inner::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA384, &self.rng, message, &mut sig)?;
                Ok(sig)
            }
            Inner::Ec(k) => Ok(k.sign(&self.rng, message)?.as_ref().to_vec()),
        }
    }

    /// A compact JWS of `claims` with the header `alg`, `typ` `JWT`, `kid` and, if given,
    /// `jku`.
    pub fn jws(&self, kid: &str, jku: Option<&str>, claims: &Json) -> Result<String, SignError> {
        let mut header = serde_json::Map::new();
        header.insert("alg".into(), json!(self.algorithm().as_str()));
        header.insert("typ".into(), json!("JWT"));
        header.insert("kid".into(), json!(kid));
        if let Some(jku) = jku {
            header.insert("jku".into(), json!(jku));
        }
        let input = format!(
            "{}.{}",
            b64(Json::Object(header).to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = self.sign(input.as_bytes()).map_err(|_| SignError)?;
        Ok(format!("{input}.{}", b64(&signature)))
    }
}

/// The signing itself failed (ring gives no reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("signing the client assertion failed")]
pub struct SignError;

/// The claims of a client assertion for `client_id` to the token endpoint `audience`, issued
/// at `now` (Unix seconds): `iss` = `sub` = the client id, `aud`, `exp` five minutes on,
/// `iat`, and a random `jti` (the server refuses a replayed one).
pub fn assertion_claims(client_id: &str, audience: &str, now: i64) -> Json {
    let jti: [u8; 16] = rand::random();
    json!({
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "exp": now + ASSERTION_LIFETIME_S,
        "iat": now,
        "jti": b64(&jti),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A P-384 key made by ring, as PEM.
    fn ec_pem() -> String {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
            .unwrap();
        let body = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
        format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n")
    }

    fn unb64(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    #[test]
    fn an_es384_assertion_verifies_with_the_published_jwk() {
        let key = SigningKey::from_pem(ec_pem().as_bytes(), None).unwrap();
        assert_eq!(key.algorithm(), JwtAlgorithm::ES384);
        let kid = key.thumbprint();
        let jwk = key.public_jwk(&kid);
        let claims = assertion_claims("gw-1", "https://auth.example/token", 1_700_000_000);
        let jws = key
            .jws(&kid, Some("https://gw.example/jwks.json"), &claims)
            .unwrap();
        let parts: Vec<&str> = jws.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: Json = serde_json::from_slice(&unb64(parts[0])).unwrap();
        assert_eq!(header["alg"], "ES384");
        assert_eq!(header["kid"], kid.as_str());
        assert_eq!(header["jku"], "https://gw.example/jwks.json");
        let body: Json = serde_json::from_slice(&unb64(parts[1])).unwrap();
        assert_eq!(body["iss"], "gw-1");
        assert_eq!(body["sub"], "gw-1");
        assert_eq!(body["aud"], "https://auth.example/token");
        assert_eq!(body["exp"], 1_700_000_300);
        // Verify with the public key rebuilt from the JWK alone.
        let mut point = vec![4u8];
        point.extend(unb64(jwk["x"].as_str().unwrap()));
        point.extend(unb64(jwk["y"].as_str().unwrap()));
        assert_eq!(point.len(), 97);
        let public = signature::UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, &point);
        public
            .verify(
                format!("{}.{}", parts[0], parts[1]).as_bytes(),
                &unb64(parts[2]),
            )
            .unwrap();
        assert!(!format!("{key:?}").contains(&jwk["x"].as_str().unwrap()[..8]));
    }

    #[test]
    fn a_key_of_another_type_than_the_algorithm_is_named() {
        let e = SigningKey::from_pem(ec_pem().as_bytes(), Some(JwtAlgorithm::RS384)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "algorithm RS384 needs an RSA key, the file holds a P-384 EC key"
        );
        assert_eq!(
            SigningKey::from_pem(b"nothing", None).unwrap_err(),
            KeyError::Pem
        );
        let p256 = EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &SystemRandom::new(),
        )
        .unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(p256.as_ref())
        );
        assert!(matches!(
            SigningKey::from_pem(pem.as_bytes(), None),
            Err(KeyError::Unsupported(_))
        ));
    }

    #[test]
    fn the_thumbprint_is_rfc_7638s() {
        // RFC 7638 §3.1's example key and thumbprint.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let canonical = format!(r#"{{"e":"AQAB","kty":"RSA","n":"{n}"}}"#);
        let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
        assert_eq!(
            b64(digest.as_ref()),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }
}
