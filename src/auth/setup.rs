//! The node's auth configuration, loaded once at start-up from the command line: the admin
//! tokens (literal, file or environment), `--auth`, the token keys and the anonymous
//! channels. Every shard reads it through `Shared::auth`.
//!
//! Invariants:
//! - Every file and variable is read here, before any shard starts; a missing, unreadable or
//!   empty source stops the start with a sentence naming the flag.
//! - Nothing here is printed with its secrets: `AdminTokens`' `Debug` shows only presence.

use std::sync::Arc;

use crate::auth::admin::{load_token, TokenSources};
use crate::auth::{check_config, AdminTokens, AuthMode, KeySet, Patterns, Scope};
use crate::config::Config;

/// What the node checks requests against.
#[derive(Debug, Default)]
pub struct NodeAuth {
    /// `--admin-token[-file|-env]` and `--admin-publish-token[-file|-env]`.
    pub admin_tokens: AdminTokens,
    /// `--auth`.
    pub mode: AuthMode,
    /// `--token-key` and `--token-key-env`.
    pub keys: KeySet,
    /// `--anonymous-channels`: what a tokenless client may subscribe to with `--auth
    /// optional` (it never publishes).
    pub anonymous: Arc<Scope>,
}

impl NodeAuth {
    /// Loads every token source the configuration names. The error is a sentence for the
    /// start-up failure.
    pub fn load(cfg: &Config) -> Result<NodeAuth, String> {
        let full = load_token(
            "admin-token",
            &TokenSources {
                literal: cfg.admin_token.as_deref(),
                file: cfg.admin_token_file.as_deref(),
                env: cfg.admin_token_env.as_deref(),
            },
        )?;
        let publish = load_token(
            "admin-publish-token",
            &TokenSources {
                literal: cfg.admin_publish_token.as_deref(),
                file: cfg.admin_publish_token_file.as_deref(),
                env: cfg.admin_publish_token_env.as_deref(),
            },
        )?;
        let keys = KeySet::load(&cfg.token_keys, &cfg.token_key_envs)
            .map_err(|error| format!("--token-key: {error}"))?;
        let anonymous = Scope {
            subscribe: Patterns::parse(&cfg.anonymous_channels)
                .map_err(|error| format!("--anonymous-channels: {error}"))?,
            publish: Patterns::none(),
        };
        check_config(cfg.auth, &keys, &anonymous)?;
        Ok(NodeAuth {
            admin_tokens: AdminTokens::new(full, publish)?,
            mode: cfg.auth,
            keys,
            anonymous: Arc::new(anonymous),
        })
    }
}
