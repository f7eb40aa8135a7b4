//! Router keys: who may call the router API, and for which apps.
//!
//! Keys are compared in constant time, and every configured key is compared on every
//! call, so timing says nothing about which key, or how much of one, matched.

use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// The apps the caller of one request may act for; stored in the request's extensions.
#[derive(Debug, Clone)]
pub enum Access {
    All,
    Apps(Arc<[String]>),
}

impl Access {
    pub fn allows(&self, app: &str) -> bool {
        match self {
            Access::All => true,
            Access::Apps(apps) => apps.iter().any(|a| a == app),
        }
    }
}

#[derive(Debug, Clone)]
struct Key {
    secret: Vec<u8>,
    access: Access,
}

/// A tonic interceptor checking the bearer key of every call.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    keys: Arc<Vec<Key>>,
}

impl Keys {
    /// `keys`: each secret with the apps it may act for (empty: all).
    pub fn new(keys: Vec<(String, Vec<String>)>) -> Self {
        let keys = keys
            .into_iter()
            .map(|(secret, apps)| Key {
                secret: secret.into_bytes(),
                access: if apps.is_empty() { Access::All } else { Access::Apps(apps.into()) },
            })
            .collect();
        Keys { keys: Arc::new(keys) }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The access `presented` grants, if any.
    fn access(&self, presented: &[u8]) -> Option<Access> {
        let mut found = None;
        for key in self.keys.iter() {
            let matched: bool = key.secret.ct_eq(presented).into();
            if matched && found.is_none() {
                found = Some(key.access.clone());
            }
        }
        found
    }

    pub fn check(&self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let access = if self.keys.is_empty() {
            Access::All
        } else {
            let header = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| {
                    Status::unauthenticated("router_key_required: send authorization: Bearer <key>")
                })?;
            self.access(header.as_bytes())
                .ok_or_else(|| Status::unauthenticated("router_key_invalid: key not recognized"))?
        };
        request.extensions_mut().insert(access);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_grant_only_their_apps() {
        let keys = Keys::new(vec![
            ("k-all-0123456789".into(), vec![]),
            ("k-demo-012345678".into(), vec!["demo".into()]),
        ]);
        assert!(keys.access(b"k-all-0123456789").unwrap().allows("x"));
        let demo = keys.access(b"k-demo-012345678").unwrap();
        assert!(demo.allows("demo") && !demo.allows("other"));
        assert!(keys.access(b"k-demo-01234567").is_none());
        assert!(keys.access(b"").is_none());
    }
}
