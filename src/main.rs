//! The `ringpush` binary: parses the command line and runs the node.

use clap::Parser;

fn main() {
    let cfg = ringpush::config::Config::parse();
    ringpush::log::start();
    let result = ringpush::node::run(cfg);
    // The shards' last lines (drain, errors) are written before the process ends, unless
    // stderr is stalled for good.
    ringpush::log::flush(std::time::Duration::from_secs(1));
    if let Err(e) = result {
        ringpush::elog!("ringpush: {e}");
        std::process::exit(1);
    }
}
