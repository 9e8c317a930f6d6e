//! Churn's `--channels`: the channel each connection joins, in raw and JSON mode, and the
//! command lines refused.

use clap::Parser as _;

use crate::cli::Cli;
use crate::plan::Plan;
use crate::scenario::Scenario;

fn parse(args: &[&str]) -> Result<Plan, String> {
    Plan::from_cli(Cli::parse_from(args))
}

#[test]
fn churn_channels_cycle_connections_over_k_channels() {
    let plan = parse(&["x", "churn", "--channels", "3", "--channel", "room"]).expect("plan");
    let targets: Vec<String> = (0..7).map(|i| plan.target(i, false).into_owned()).collect();
    assert_eq!(
        targets,
        [
            "/ws/room.0",
            "/ws/room.1",
            "/ws/room.2",
            "/ws/room.0",
            "/ws/room.1",
            "/ws/room.2",
            "/ws/room.0"
        ]
    );
    assert_eq!(plan.path, "/ws/room.0");
    assert!(matches!(
        plan.scenario,
        Scenario::Churn {
            spread: Some(_),
            ..
        }
    ));
    let plan = parse(&["x", "churn", "--channels", "10000"]).expect("plan");
    assert_eq!(plan.target(123_456, false), "/ws/bench.3456");
}

#[test]
fn churn_channels_in_json_mode_go_through_the_query() {
    let plan = parse(&["x", "churn", "--format", "json", "--channels", "4"]).expect("plan");
    assert_eq!(plan.target(5, false), "/ws?format=json&channel=bench.1");
    assert_eq!(plan.target(8, false), "/ws?format=json&channel=bench.0");
}

#[test]
fn churn_without_channels_keeps_its_one_path() {
    let plan = parse(&["x", "churn"]).expect("plan");
    assert_eq!(plan.target(0, false), "/echo");
    assert_eq!(plan.target(99, false), "/echo");
    let plan = parse(&["x", "churn", "--path", "/ws/one"]).expect("plan");
    assert_eq!(plan.target(99, false), "/ws/one");
}

#[test]
fn churn_channels_refuse_what_they_cannot_honour() {
    for (bad, says) in [
        (&["x", "churn", "--channels", "0"][..], "at least 1"),
        (
            &["x", "churn", "--channels", "2", "--path", "/ws/a"],
            "--path",
        ),
        (
            &[
                "x",
                "churn",
                "--format",
                "json",
                "--channels",
                "2",
                "--channels-per-conn",
                "2",
            ],
            "--channels-per-conn",
        ),
        (
            &["x", "churn", "--channels", "2", "--channel", "no spaces"],
            "invalid channel",
        ),
    ] {
        let error = parse(bad).expect_err("refused");
        assert!(error.contains(says), "{bad:?}: {error}");
    }
}
