//! Loading the admin tokens (`--admin-token`, `--admin-publish-token`) from a literal, a file
//! or an environment variable, for `http::admin_scope::AdminTokens`.
//!
//! Invariants:
//! - At most one source per token; an empty token, from any source, is a start-up error:
//!   `Bearer` with nothing after it must never authenticate.
//! - A file's one trailing newline (LF or CRLF) is stripped, nothing else.

use std::path::Path;

pub use crate::http::admin_scope::{AdminDenial, AdminScope, AdminTokens};

/// Where one admin token comes from: at most one of the three may be given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenSources<'a> {
    /// The flag's literal value (`--admin-token T`).
    pub literal: Option<&'a str>,
    /// `--admin-token-file FILE`: the file's bytes, one trailing newline stripped.
    pub file: Option<&'a Path>,
    /// `--admin-token-env VAR`.
    pub env: Option<&'a str>,
}

/// Reads one admin token from its sources. `name` is the flag's name for the messages
/// (`admin-token`).
pub fn load_token(name: &str, sources: &TokenSources<'_>) -> Result<Option<Box<[u8]>>, String> {
    let given = [
        sources.literal.is_some(),
        sources.file.is_some(),
        sources.env.is_some(),
    ];
    if given.iter().filter(|&&g| g).count() > 1 {
        return Err(format!(
            "give --{name} one way: a literal, --{name}-file or --{name}-env"
        ));
    }
    let token: Vec<u8> = if let Some(literal) = sources.literal {
        literal.as_bytes().to_vec()
    } else if let Some(path) = sources.file {
        let bytes =
            std::fs::read(path).map_err(|e| format!("--{name}-file {}: {e}", path.display()))?;
        let bytes = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        bytes.strip_suffix(b"\r").unwrap_or(bytes).to_vec()
    } else if let Some(var) = sources.env {
        std::env::var(var)
            .map_err(|_| format!("--{name}-env {var}: unset or not UTF-8"))?
            .into_bytes()
    } else {
        return Ok(None);
    };
    if token.is_empty() {
        return Err(format!("--{name} is empty"));
    }
    Ok(Some(token.into()))
}

#[cfg(test)]
#[path = "admin_tests.rs"]
mod tests;
