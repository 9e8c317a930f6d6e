//! Tests of `end.rs`: the table of ends (codes, reasons, labels, counters).

use super::*;

/// One of each end (a protocol error for each code `ProtocolError` maps to).
fn every_end() -> Vec<End> {
    let mut ends = vec![
        End::IdleTimeout,
        End::Shutdown,
        End::DrainAbort,
        End::DrainHandshake,
        End::DrainSpread,
        End::SlowConsumer,
        End::Replaced,
        End::ReassemblyBudget,
        End::PublishRate,
        End::PublishQueueFull,
        End::PeerClose(None),
        End::PeerGone,
        End::HandshakeTimeout,
        End::HandshakeRefused,
        End::CloseTimeout,
        End::AdminSlowReader,
        End::AdminEvicted,
        End::AdminAnswered,
        End::AdminPeerClosed,
        End::AdminIdle,
        End::JsonCommandTooLarge,
        End::JsonMalformedCommands,
        End::TokenExpired,
        End::ControlRate,
        End::MessageRate,
    ];
    for code in [1002, 1007, 1008, 1009] {
        ends.push(End::ProtocolError(CloseCode(code)));
    }
    // A new variant must be added above: this match fails to compile until it is.
    for end in &ends {
        match end {
            End::IdleTimeout
            | End::Shutdown
            | End::DrainAbort
            | End::DrainHandshake
            | End::DrainSpread
            | End::SlowConsumer
            | End::Replaced
            | End::ProtocolError(_)
            | End::ReassemblyBudget
            | End::PublishRate
            | End::PublishQueueFull
            | End::PeerClose(_)
            | End::PeerGone
            | End::HandshakeTimeout
            | End::HandshakeRefused
            | End::CloseTimeout
            | End::AdminSlowReader
            | End::AdminEvicted
            | End::AdminAnswered
            | End::AdminPeerClosed
            | End::AdminIdle
            | End::JsonCommandTooLarge
            | End::JsonMalformedCommands
            | End::TokenExpired
            | End::ControlRate
            | End::MessageRate => {}
        }
    }
    ends
}

#[test]
fn a_close_frame_carries_a_wire_code_and_a_short_reason() {
    for end in every_end() {
        let spec = end.spec();
        let frame = matches!(spec.mode, Mode::Graceful | Mode::Fail);
        if spec.mode != Mode::Echo {
            let has_code = spec.code.is_some();
            assert_eq!(has_code, frame, "{end:?}: a code exactly with a frame");
        }
        if let Some(code) = spec.code {
            assert!(code.is_valid_on_wire(), "{end:?} sends {code}");
            assert!(
                ![1005, 1006, 1015].contains(&code.0),
                "{end:?} sends {code}"
            );
        }
        assert!(spec.reason.len() <= CLOSE_REASON_BYTES_MAX, "{end:?}");
        // A protocol error's frame has always carried an empty reason (the Autobahn
        // golden file and tests see it); every other frame names its reason.
        let named = frame && !matches!(end, End::ProtocolError(_));
        assert_eq!(!spec.reason.is_empty(), named, "{end:?}: {:?}", spec.reason);
    }
}

#[test]
fn the_wire_and_log_names_are_the_ones_shipped() {
    let wire: Vec<(u16, &str)> = [
        End::IdleTimeout,
        End::Shutdown,
        End::SlowConsumer,
        End::Replaced,
        End::ReassemblyBudget,
        End::PublishRate,
        End::PublishQueueFull,
        End::TokenExpired,
        End::ControlRate,
        End::MessageRate,
        End::DrainSpread,
    ]
    .iter()
    .map(|e| (e.spec().code.unwrap().0, e.spec().reason))
    .collect();
    assert_eq!(
        wire,
        [
            (1001, "idle timeout"),
            (1001, "server shutting down"),
            (1008, "slow consumer"),
            (4001, "replaced"),
            (1009, "reassembly budget"),
            (1008, "publish rate"),
            (1008, "publish queue full"),
            (4003, "token expired"),
            (1008, "control rate"),
            (1008, "message rate"),
            (4002, "reconnect elsewhere"),
        ]
    );
    assert_eq!(
        End::ProtocolError(CloseCode(1007)).spec().code,
        Some(CloseCode(1007))
    );
    // An echo carries the peer's code, already checked on receipt, and no reason.
    let echo = End::PeerClose(Some(CloseCode::NORMAL)).spec();
    assert_eq!((echo.code, echo.reason), (Some(CloseCode::NORMAL), ""));
    assert_eq!(End::PeerClose(None).spec().code, None);
}

#[test]
fn labels_and_counters_are_distinct() {
    let ends = every_end();
    let mut labels: Vec<&str> = Vec::new();
    let mut counters: Vec<Counter> = Vec::new();
    for end in &ends {
        let spec = end.spec();
        assert!(!spec.event.is_empty(), "{end:?}");
        // The protocol errors share one label and counter: the code tells them apart.
        if matches!(end, End::ProtocolError(c) if c.0 != 1002) {
            continue;
        }
        assert!(
            !labels.contains(&spec.event),
            "{end:?} reuses {}",
            spec.event
        );
        labels.push(spec.event);
        if let Some(counter) = spec.counter {
            assert!(!counters.contains(&counter), "{end:?} reuses {counter:?}");
            counters.push(counter);
        }
    }
}

#[test]
fn each_counter_is_its_own_field() {
    let all = [
        Counter::IdleCloses,
        Counter::SlowConsumerCloses,
        Counter::SessionsReplaced,
        Counter::ProtocolErrors,
        Counter::ReassemblyBudgetCloses,
        Counter::ClientPublishRateCloses,
        Counter::HandshakeTimeouts,
        Counter::AdminSlowReaderCloses,
        Counter::AdminEvicted,
        Counter::TokenExpiredCloses,
        Counter::ControlRateCloses,
        Counter::MessageRateCloses,
        Counter::DrainCloses,
    ];
    let mut counters = Counters::new();
    for (i, counter) in all.iter().enumerate() {
        *counter.field(&mut counters) += 1;
        for (j, other) in all.iter().enumerate() {
            let want = u64::from(j <= i);
            assert_eq!(
                *other.field(&mut counters),
                want,
                "{counter:?} vs {other:?}"
            );
        }
    }
}

/// The close frames the node sends, `(code, reason)`, in the table's order: what
/// INTERFACES.md lists.
fn wire_closes() -> Vec<(u16, &'static str)> {
    let mut wire: Vec<(u16, &'static str)> = every_end()
        .iter()
        .filter_map(|end| Some((end.spec().code?.0, end.spec().reason)))
        .collect();
    wire.dedup();
    wire
}

mod interface_tests {
    use super::*;

    /// `(code, reason)` rows of INTERFACES.md's close-code table.
    fn documented() -> Vec<(u16, String)> {
        let doc = include_str!("../../INTERFACES.md");
        let section = doc
            .split("## Close codes the node sends")
            .nth(1)
            .expect("INTERFACES.md has its close-code section");
        section
            .lines()
            .skip_while(|line| !line.starts_with("|---"))
            .skip(1)
            .take_while(|line| line.starts_with('|'))
            .map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let code = cells[1].trim_matches('`').parse().expect("a close code");
                (code, cells[2].trim_matches('"').to_string())
            })
            .collect()
    }

    #[test]
    fn issue_13_every_close_the_node_sends_is_in_interfaces_md_and_back() {
        let mut wire: Vec<(u16, String)> = wire_closes()
            .into_iter()
            .map(|(code, reason)| (code, reason.to_string()))
            .collect();
        let mut doc = documented();
        wire.sort();
        wire.dedup();
        doc.sort();
        assert_eq!(
            wire, doc,
            "INTERFACES.md's close codes against the End table"
        );
    }
}
