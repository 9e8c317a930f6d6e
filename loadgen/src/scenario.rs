//! The scenarios and their parameters, and the checks that turn each scenario's command
//! line into them (`Plan::from_cli`); the options every scenario shares are checked in
//! [`crate::plan`].
//!
//! Invariants:
//! - Each scenario's own options are validated here, once; `Plan::with_common` validates
//!   the rest, so a `Plan` that exists is wholly valid.

use std::net::SocketAddr;
use std::time::Duration;

use crate::addr::resolve;
use crate::cli::{ChurnArgs, Cli, Format, Publisher, ScenarioCmd};
use crate::payload::STAMP_BYTES;
use crate::plan::Plan;
use crate::target::{check_channel, ChannelSpread};

/// What the scenario does with open connections.
#[derive(Clone, Debug)]
pub enum Scenario {
    /// Hold them.
    Connect,
    /// Send stamped messages and time the echoes.
    Echo(EchoPlan),
    /// Receive stamped messages from a publisher.
    Broadcast(BroadcastPlan),
    /// Open, hold for `lifetime`, close, reopen.
    Churn {
        /// Mean lifetime of an open connection.
        lifetime: Duration,
        /// The channels the connections join (`--channels`), if any.
        spread: Option<ChannelSpread>,
    },
    /// JSON mode: subscribe, disconnect, publish, reconnect with `since`.
    Resume(ResumePlan),
}

/// The resume scenario's parameters.
#[derive(Clone, Debug)]
pub struct ResumePlan {
    /// The publisher of the messages missed (admin API, `count` = the messages, unpaced).
    pub publish: BroadcastPlan,
    /// Messages published while the clients are away.
    pub messages: u64,
}

impl Scenario {
    /// The scenario's name in output.
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Connect => "connect",
            Scenario::Echo(_) => "echo",
            Scenario::Broadcast(_) => "broadcast",
            Scenario::Churn { .. } => "churn",
            Scenario::Resume(_) => "resume",
        }
    }
}

/// The echo scenario's parameters.
#[derive(Clone, Debug)]
pub struct EchoPlan {
    /// Payload bytes per message.
    pub size: usize,
    /// Messages per second in total; 0 for closed loop.
    pub msg_rate: f64,
    /// Closed loop: messages in flight per connection.
    pub pipeline: u32,
    /// Text frames (hex stamp) rather than binary.
    pub text: bool,
}

/// The broadcast scenario's parameters.
#[derive(Clone, Debug)]
pub struct BroadcastPlan {
    /// The channel.
    pub channel: String,
    /// Who publishes.
    pub publisher: Publisher,
    /// Admin API address.
    pub admin: SocketAddr,
    /// Admin bearer token.
    pub admin_token: Option<String>,
    /// Publishes per second.
    pub msg_rate: f64,
    /// Payload bytes.
    pub size: usize,
    /// Stop after this many publishes.
    pub count: Option<u64>,
    /// Admin publishes unanswered at most (1: wait for each answer).
    pub in_flight: usize,
}

/// Reconnect policy: exponential backoff with full jitter.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// Ceiling of the first delay.
    pub base: Duration,
    /// Largest ceiling.
    pub max: Duration,
}

impl Backoff {
    /// The ceiling before attempt `attempt` (1-based): `min(max, base * 2^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(30);
        self.base.saturating_mul(1 << shift).min(self.max)
    }
}

impl Plan {
    /// Validates the command line. Notes about choices made go to stderr; errors are
    /// user-facing messages.
    pub fn from_cli(cli: Cli) -> Result<Plan, String> {
        let (common, scenario, default_path) = match cli.scenario {
            ScenarioCmd::Connect(a) => {
                let path = match &a.channel {
                    Some(channel) => {
                        check_channel(channel)?;
                        format!("/ws/{channel}")
                    }
                    None => "/echo".to_string(),
                };
                let channel = a.channel.unwrap_or_else(|| "bench".into());
                return Plan::with_common(a.common, Scenario::Connect, path, &channel);
            }
            ScenarioCmd::Echo(a) => {
                let stamp_min = if a.text { 2 * STAMP_BYTES } else { STAMP_BYTES };
                if a.size < stamp_min {
                    return Err(format!(
                        "--size must be at least {stamp_min} bytes (the send timestamp and \
                         sequence number{})",
                        if a.text { " as hex digits" } else { "" }
                    ));
                }
                if !(a.msg_rate >= 0.0 && a.msg_rate.is_finite()) {
                    return Err("--msg-rate must be a non-negative number".into());
                }
                if a.msg_rate == 0.0 && a.pipeline == 0 {
                    return Err("closed loop (--msg-rate 0) needs --pipeline of 1 or more".into());
                }
                let plan = EchoPlan {
                    size: a.size,
                    msg_rate: a.msg_rate,
                    pipeline: a.pipeline,
                    text: a.text,
                };
                if a.common.format == Some(Format::Json) {
                    return Err(
                        "echo speaks raw mode only: the node does not echo in JSON mode".into(),
                    );
                }
                (a.common, Scenario::Echo(plan), "/echo".to_string())
            }
            ScenarioCmd::Broadcast(a) => {
                if a.size < STAMP_BYTES {
                    return Err(format!(
                        "--size must be at least {STAMP_BYTES} bytes (send timestamp and \
                         sequence number)"
                    ));
                }
                if !(a.msg_rate > 0.0 && a.msg_rate.is_finite()) {
                    return Err("--msg-rate must be a positive number".into());
                }
                check_channel(&a.channel)?;
                if a.publisher == Publisher::None && a.count.is_none() {
                    return Err("--publisher none needs --count: the number of messages \
                                another process publishes"
                        .into());
                }
                check_in_flight(a.in_flight, a.publisher)?;
                let admin = resolve(&a.admin).map_err(|e| format!("--admin: {e}"))?;
                let path = format!("/ws/{}", a.channel);
                let plan = BroadcastPlan {
                    channel: a.channel,
                    publisher: a.publisher,
                    admin,
                    admin_token: a.admin_token,
                    msg_rate: a.msg_rate,
                    size: a.size,
                    count: a.count,
                    in_flight: a.in_flight,
                };
                let channel = plan.channel.clone();
                return Plan::with_common(a.common, Scenario::Broadcast(plan), path, &channel);
            }
            ScenarioCmd::Resume(a) => {
                if a.size < STAMP_BYTES {
                    return Err(format!(
                        "--size must be at least {STAMP_BYTES} bytes (send timestamp and \
                         sequence number)"
                    ));
                }
                if a.messages == 0 {
                    return Err("--messages must be at least 1".into());
                }
                if a.common.format == Some(Format::Raw) {
                    return Err("resume needs --format json: raw mode has no resume".into());
                }
                check_channel(&a.channel)?;
                let admin = resolve(&a.admin).map_err(|e| format!("--admin: {e}"))?;
                let mut common = a.common;
                common.format = Some(Format::Json);
                let plan = ResumePlan {
                    publish: BroadcastPlan {
                        channel: a.channel.clone(),
                        publisher: Publisher::Admin,
                        admin,
                        admin_token: a.admin_token,
                        // Unpaced: the messages go out back to back.
                        msg_rate: 1e9,
                        size: a.size,
                        count: Some(a.messages),
                        in_flight: 1,
                    },
                    messages: a.messages,
                };
                return Plan::with_common(
                    common,
                    Scenario::Resume(plan),
                    String::new(),
                    &a.channel,
                );
            }
            ScenarioCmd::Plot(_) => return Err("plot draws saved runs; it runs no load".into()),
            ScenarioCmd::FloorServer(_) | ScenarioCmd::FloorConnect(_) => {
                return Err("the floor commands run without a plan".into())
            }
            ScenarioCmd::Churn(a) => {
                if a.lifetime.is_zero() {
                    return Err("--lifetime must be positive".into());
                }
                let spread = churn_spread(&a)?;
                let path = spread
                    .as_ref()
                    .map_or("/echo".to_string(), |s| s.raw_target(0));
                let channel = spread.as_ref().map_or("bench".to_string(), |s| s.name(0));
                let scenario = Scenario::Churn {
                    lifetime: a.lifetime,
                    spread,
                };
                return Plan::with_common(a.common, scenario, path, &channel);
            }
        };
        Plan::with_common(common, scenario, default_path, "bench")
    }
}

/// `--in-flight`: at least 1, and above 1 only for the admin publisher (a WebSocket
/// publisher has no answers to wait for).
pub fn check_in_flight(in_flight: usize, publisher: Publisher) -> Result<(), String> {
    match (in_flight, publisher) {
        (0, _) => Err("--in-flight must be at least 1".into()),
        (1, _) | (_, Publisher::Admin) => Ok(()),
        _ => Err("--in-flight above 1 needs --publisher admin".into()),
    }
}

/// Churn's `--channels`: checked here (a count of at least 1, names the node accepts, no
/// `--path` or JSON fillers beside it), since each connection's target is built from it.
fn churn_spread(a: &ChurnArgs) -> Result<Option<ChannelSpread>, String> {
    let Some(channels) = a.channels else {
        return Ok(None);
    };
    if channels == 0 {
        return Err("--channels must be at least 1".into());
    }
    if a.common.path.is_some() {
        return Err("--channels builds each connection's target: drop --path".into());
    }
    if a.common.channels_per_conn != 1 {
        return Err(
            "--channels gives each connection one channel: drop --channels-per-conn".into(),
        );
    }
    let spread = ChannelSpread::new(a.channel.clone(), channels);
    // The last name is the longest.
    check_channel(&spread.name(channels - 1))?;
    Ok(Some(spread))
}

#[cfg(test)]
#[path = "scenario_tests.rs"]
mod tests;
