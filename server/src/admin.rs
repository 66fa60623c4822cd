//! The admin routes' guard (`POST /v1/models/NAME/load`, `.../pause`, `.../resume`, and
//! any later admin route):
//! they answer 403 unless the server was started with `--admin-token-file FILE` and
//! the request carries that token as `Authorization: Bearer TOKEN`, compared in
//! constant time (`subtle`), so the answer's timing says nothing about the token.

use std::path::Path;

use axum::http::{HeaderMap, StatusCode, header};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The shortest token accepted from `--admin-token-file`, in bytes.
pub const MIN_TOKEN_BYTES: usize = 16;

/// The admin token: the file's contents without surrounding whitespace.
#[derive(Clone)]
pub struct AdminToken(Vec<u8>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// Reads the token from `file` (at least [`MIN_TOKEN_BYTES`] bytes once trimmed).
    pub fn read(file: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read(file).map_err(|e| {
            anyhow::anyhow!("cannot read --admin-token-file {}: {e}", file.display())
        })?;
        let token = text.trim_ascii();
        anyhow::ensure!(
            token.len() >= MIN_TOKEN_BYTES,
            "--admin-token-file {} holds a token of {} bytes; use at least {MIN_TOKEN_BYTES} (e.g. `openssl rand -hex 32`)",
            file.display(),
            token.len()
        );
        Ok(Self(token.to_vec()))
    }

    /// Whether `given` is the token (constant time in the token's contents).
    fn matches(&self, given: &[u8]) -> bool {
        self.0.ct_eq(given).into()
    }
}

fn forbidden(detail: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail)
}

/// Lets an admin request through, or refuses it with 403 `forbidden`.
pub fn authorize(token: Option<&AdminToken>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = token else {
        return Err(forbidden(
            "admin routes are off: start lse-serve with --admin-token-file FILE and send Authorization: Bearer TOKEN",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .map(<[u8]>::trim_ascii);
    match given {
        Some(g) if token.matches(g) => Ok(()),
        _ => Err(forbidden(
            "this admin route needs the server's admin token as Authorization: Bearer TOKEN",
        )),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    #[test]
    fn only_the_token_passes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "0123456789abcdef0123\n").unwrap();
        let t = AdminToken::read(&file).unwrap();
        assert!(authorize(Some(&t), &headers(Some("Bearer 0123456789abcdef0123"))).is_ok());
        for bad in [
            None,
            Some("Bearer 0123456789abcdef012"),
            Some("Bearer 0123456789abcdef01234"),
            Some("Basic 0123456789abcdef0123"),
            Some("0123456789abcdef0123"),
        ] {
            let e = authorize(Some(&t), &headers(bad)).unwrap_err();
            assert_eq!((e.status.as_u16(), e.code), (403, "forbidden"), "{bad:?}");
        }
        let off = authorize(None, &headers(Some("Bearer 0123456789abcdef0123"))).unwrap_err();
        assert_eq!(off.status.as_u16(), 403);
        assert!(off.detail.contains("--admin-token-file"), "{off}");
    }

    #[test]
    fn short_or_missing_token_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "short\n").unwrap();
        let e = AdminToken::read(&file).unwrap_err().to_string();
        assert!(e.contains("at least 16"), "{e}");
        let e = AdminToken::read(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read --admin-token-file"), "{e}");
    }
}
