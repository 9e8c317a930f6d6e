//! The upgrade target each connection asks for: the raw path, or JSON mode's
//! `/ws?format=json&channel=…` with the connection's channels (PROTOCOL.md).
//!
//! Invariants:
//! - In JSON mode the first channel of every connection is the scenario's channel, so a
//!   publish on it reaches every connection; the fillers after it never repeat within a
//!   connection (the node refuses a repeated channel).
//! - With shared fillers every connection asks for the same target, built once.
//! - Churn's `--channels K` overrides both: connection `index` asks for one channel,
//!   `<channel>.<index mod K>`.

use std::borrow::Cow;

use crate::cli::Fillers;
use crate::plan::Plan;
use crate::scenario::Scenario;

/// The client protocol of every connection.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Bare payloads on `Plan::path`.
    Raw,
    /// JSON objects (PROTOCOL.md).
    Json(JsonMode),
}

/// JSON mode's channels.
#[derive(Clone, Debug)]
pub struct JsonMode {
    /// The scenario's channel, subscribed first by every connection.
    pub channel: String,
    /// Channels per connection, the scenario's included.
    pub channels_per_conn: usize,
    /// How fillers are named.
    pub fillers: Fillers,
    /// The upgrade target when fillers are shared (the same for every connection).
    shared_target: String,
}

impl JsonMode {
    /// JSON mode with `channels_per_conn` channels: `channel`, then fillers.
    pub fn new(channel: String, channels_per_conn: usize, fillers: Fillers) -> JsonMode {
        let mut mode = JsonMode {
            channel,
            channels_per_conn,
            fillers,
            shared_target: String::new(),
        };
        mode.shared_target = mode.build_target(0);
        mode
    }

    /// The name of channel `k` (0-based) of connection `index`.
    pub fn channel_name(&self, index: u64, k: usize) -> String {
        match (k, self.fillers) {
            (0, _) => self.channel.clone(),
            (_, Fillers::Shared) => format!("{}.{}", self.channel, k + 1),
            (_, Fillers::Distinct) => format!("{}.{index}.{}", self.channel, k + 1),
        }
    }

    fn build_target(&self, index: u64) -> String {
        let mut target = String::from("/ws?format=json");
        for k in 0..self.channels_per_conn {
            target.push_str("&channel=");
            target.push_str(&self.channel_name(index, k));
        }
        target
    }

    /// The upgrade target of connection `index`: its channels in the query.
    pub fn target(&self, index: u64) -> Cow<'_, str> {
        match self.fillers {
            Fillers::Shared => Cow::Borrowed(&self.shared_target),
            Fillers::Distinct => Cow::Owned(self.build_target(index)),
        }
    }
}

/// The upgrade target of a resuming client: no channels, it subscribes with `since`.
pub const RESUME_TARGET: &str = "/ws?format=json";

/// Churn's `--channels K`: connection `index` joins `<channel>.<index mod K>`. Indices are
/// handed out in order of opening (reopens count), so joins cycle through every channel
/// and about N / K connections share each channel at any time.
#[derive(Clone, Debug)]
pub struct ChannelSpread {
    /// The stem of every name.
    pub channel: String,
    /// K, at least 1.
    pub channels: u64,
}

impl ChannelSpread {
    /// The spread of `channels` channels named after `channel`.
    pub fn new(channel: String, channels: u64) -> ChannelSpread {
        debug_assert!(channels >= 1);
        ChannelSpread { channel, channels }
    }

    /// The channel connection `index` joins.
    pub fn name(&self, index: u64) -> String {
        format!("{}.{}", self.channel, index % self.channels)
    }

    /// Raw mode's target of connection `index`: `/ws/<channel>.<index mod K>`.
    pub fn raw_target(&self, index: u64) -> String {
        format!("/ws/{}", self.name(index))
    }

    /// The target of connection `index` in `mode`.
    pub fn target(&self, mode: &Mode, index: u64) -> String {
        match mode {
            Mode::Raw => self.raw_target(index),
            Mode::Json(_) => format!("/ws?format=json&channel={}", self.name(index)),
        }
    }
}

impl Plan {
    /// The upgrade target of connection `index` (`resuming`: a resume scenario's
    /// reconnect, which subscribes by command instead).
    pub fn target(&self, index: u64, resuming: bool) -> Cow<'_, str> {
        if let Scenario::Churn {
            spread: Some(spread),
            ..
        } = &self.scenario
        {
            return Cow::Owned(spread.target(&self.mode, index));
        }
        match &self.mode {
            Mode::Raw => Cow::Borrowed(&self.path),
            Mode::Json(_) if resuming => Cow::Borrowed(RESUME_TARGET),
            Mode::Json(json) => json.target(index),
        }
    }
}

/// The `Authorization` value of `--token-file FILE`: `Bearer <token>`, the token being the
/// file's text without one trailing newline. A token is base64url segments and dots, so
/// anything else (spaces, line breaks, several lines) is refused before a request is sent.
pub fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--token-file {}: {e}", path.display()))?;
    let token = text.strip_suffix('\n').unwrap_or(&text);
    let token = token.strip_suffix('\r').unwrap_or(token);
    let valid = !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        return Err(format!(
            "--token-file {}: not one compact JWT (base64url segments joined by dots)",
            path.display()
        ));
    }
    Ok(format!("Bearer {token}"))
}

/// A channel name the node accepts, or the error saying why not.
pub fn check_channel(name: &str) -> Result<(), String> {
    if valid_channel(name) {
        Ok(())
    } else {
        Err(format!(
            "invalid channel name {name:?} (use [A-Za-z0-9_.:-], at most 128 bytes)"
        ))
    }
}

/// Whether `name` is a channel name the node accepts: `[A-Za-z0-9_.:-]{1,128}`.
fn valid_channel(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}
