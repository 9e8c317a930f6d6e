//! The documents state figures the code must keep true: this reads them and compares.

use std::fs;

/// The per-connection figure in the README and ARCHITECTURE.md is the real size of a
/// connection's slab entry (issue 8: the README said 96 bytes while the code pinned 128).
#[test]
fn issue_8_docs_state_the_real_connection_size() {
    for doc in ["README.md", "ARCHITECTURE.md"] {
        check_connection_size(doc);
    }
}

fn check_connection_size(doc: &str) {
    let path = format!("{}/{doc}", env!("CARGO_MANIFEST_DIR"));
    let readme = fs::read_to_string(&path).expect(doc);
    let stated: Vec<usize> = readme
        .match_indices("-byte slab entry")
        .map(|(at, _)| {
            let digits: String = readme[..at]
                .chars()
                .rev()
                .take_while(char::is_ascii_digit)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            digits
                .parse()
                .expect("a number before \"-byte slab entry\"")
        })
        .collect();
    let real = std::mem::size_of::<ringpush::conn::Conn>();
    assert!(
        !stated.is_empty(),
        "{doc} no longer states the connection size"
    );
    for n in stated {
        assert_eq!(
            n, real,
            "{doc} says a connection is {n} bytes; size_of::<Conn>() = {real}"
        );
    }
    assert!(real <= ringpush::conn::CONN_BYTES_MAX);
}

/// Every command-line flag of the node has a row in the README's options table: a flag is an
/// interface users rely on, so it is documented where they look.
#[test]
fn every_flag_is_in_the_readme() {
    use clap::CommandFactory as _;

    let readme =
        fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let missing: Vec<String> = ringpush::config::Config::command()
        .get_arguments()
        .filter_map(|arg| arg.get_long())
        .filter(|long| !matches!(*long, "help" | "version"))
        .filter(|long| !readme.contains(&format!("`--{long}`")))
        .map(|long| format!("--{long}"))
        .collect();
    assert!(
        missing.is_empty(),
        "flags missing from README.md: {missing:?}"
    );
}
