//! The `ringpush` binary: reads its configuration (flags, environment, file) and runs the
//! node, or prints the effective configuration.

fn main() {
    let cfg = ringpush::config::Config::load();
    if cfg.print_config {
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        let env: Vec<(String, String)> = std::env::vars().collect();
        match ringpush::config::print_effective(&args, &env) {
            Ok(text) => print!("{text}"),
            Err(e) => e.exit(),
        }
        return;
    }
    ringpush::log::start(cfg.log_format);
    let result = ringpush::node::run(cfg);
    // The shards' last lines (drain, errors) are written before the process ends, unless
    // stderr is stalled for good.
    ringpush::log::flush(std::time::Duration::from_secs(1));
    if let Err(e) = result {
        ringpush::elog!("ringpush: {e}");
        std::process::exit(1);
    }
}
