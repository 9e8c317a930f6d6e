//! The `ringpush` binary: parses the command line and runs the node.

use clap::Parser;

fn main() {
    let cfg = ringpush::config::Config::parse();
    if let Err(e) = ringpush::node::run(cfg) {
        eprintln!("ringpush: {e}");
        std::process::exit(1);
    }
}
