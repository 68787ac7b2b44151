//! The reply envelope: `{"ok": true, ...body}` or `{"ok": false, "error": "..."}`.

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One reply line. `T` is the body of a successful answer; its fields sit
/// beside `"ok": true` (flattened), as the README documents them.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply<T> {
    Ok(T),
    Err(String),
}

/// A body with no fields (`{"ok": true}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

impl<T> Reply<T> {
    pub fn into_result(self) -> Result<T, String> {
        match self {
            Reply::Ok(t) => Ok(t),
            Reply::Err(e) => Err(e),
        }
    }
}

impl<T, E: std::fmt::Display> From<Result<T, E>> for Reply<T> {
    fn from(r: Result<T, E>) -> Self {
        match r {
            Ok(t) => Reply::Ok(t),
            Err(e) => Reply::Err(e.to_string()),
        }
    }
}

#[derive(Serialize)]
struct OkRef<'a, T> {
    ok: bool,
    #[serde(flatten)]
    body: &'a T,
}

#[derive(Serialize, Deserialize)]
struct ErrLine {
    ok: bool,
    error: String,
}

impl<T: Serialize> Serialize for Reply<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Reply::Ok(body) => OkRef { ok: true, body }.serialize(s),
            Reply::Err(error) => ErrLine {
                ok: false,
                error: error.clone(),
            }
            .serialize(s),
        }
    }
}

/// Which of the two a line is; read before the body.
#[derive(Deserialize)]
struct Head {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Reply<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The envelope's one generic step: take the line as a JSON object,
        // look at `ok`, then decode the whole object as the typed body
        // (the body types ignore the `ok` key).
        let v = serde_json::Value::deserialize(d)?;
        let head = Head::deserialize(&v).map_err(D::Error::custom)?;
        if !head.ok {
            return Ok(Reply::Err(
                head.error.unwrap_or_else(|| "request failed".into()),
            ));
        }
        T::deserialize(v).map(Reply::Ok).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Installed {
        installed: usize,
    }

    #[test]
    fn ok_bodies_sit_beside_ok_and_errors_carry_their_message() {
        let ok = serde_json::to_string(&Reply::Ok(Installed { installed: 3 })).unwrap();
        assert_eq!(ok, r#"{"ok":true,"installed":3}"#);
        let back: Reply<Installed> = serde_json::from_str(&ok).unwrap();
        assert_eq!(back, Reply::Ok(Installed { installed: 3 }));
        let err = serde_json::to_string(&Reply::<Installed>::Err("no".into())).unwrap();
        assert_eq!(err, r#"{"ok":false,"error":"no"}"#);
        let back: Reply<Installed> = serde_json::from_str(&err).unwrap();
        assert_eq!(back, Reply::Err("no".into()));
        assert_eq!(
            serde_json::to_string(&Reply::Ok(Empty {})).unwrap(),
            r#"{"ok":true}"#
        );
    }

    #[test]
    fn a_reply_without_ok_or_with_the_wrong_body_is_an_error() {
        assert!(serde_json::from_str::<Reply<Installed>>(r#"{"installed":3}"#).is_err());
        assert!(serde_json::from_str::<Reply<Installed>>(r#"{"ok":true}"#).is_err());
        assert!(serde_json::from_str::<Reply<Installed>>("[1]").is_err());
    }
}
