//! Mints a connection token for benchmarks and manual tests (issue 11): a compact JWT the
//! node accepts under `--auth`, printed on stdout for `ringpush-loadgen --token-file`.
//!
//! ```text
//! cargo run --release --example mint_token -- --alg hs256 \
//!     --key tests/fixtures/keys/hs1.secret --channels 'bench,bench.*' > /tmp/token
//! cargo run --release --example mint_token -- --alg es256 \
//!     --key tests/fixtures/keys/private/es1.pem --kid es1 > /tmp/token
//! ```
//!
//! An HS256 key file is the shared secret the node also reads (one trailing newline
//! stripped, as the node does); an ES256 or RS256 key file is the PEM private key whose
//! public half the node holds. This is a tool for benches: a real backend signs with its own
//! JWT library.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

/// The token's signature algorithm.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Alg {
    Hs256,
    Es256,
    Rs256,
}

/// Mints one connection token.
#[derive(Parser, Debug)]
struct Args {
    /// The signature algorithm.
    #[arg(long, value_enum)]
    alg: Alg,
    /// The signing key: an HS256 secret file, or a PEM private key for ES256/RS256.
    #[arg(long)]
    key: PathBuf,
    /// The `kid` header (the node's key id: its key file's name without extension).
    #[arg(long)]
    kid: Option<String>,
    /// The session (`sub`).
    #[arg(long, default_value = "bench")]
    sub: String,
    /// Channels the token allows (`channels`, comma-separated; names, `prefix.*`, `*`).
    #[arg(long, value_delimiter = ',', default_value = "*")]
    channels: Vec<String>,
    /// Channels the client may publish to (`publish`, comma-separated); none by default.
    #[arg(long, value_delimiter = ',')]
    publish: Vec<String>,
    /// Seconds until `exp`.
    #[arg(long, default_value_t = 3600)]
    ttl_s: u64,
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let bytes = std::fs::read(&args.key).map_err(|e| format!("{}: {e}", args.key.display()))?;
    let (alg, key) = match args.alg {
        Alg::Hs256 => {
            let secret = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
            (Algorithm::HS256, EncodingKey::from_secret(secret))
        }
        Alg::Es256 => (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&bytes).map_err(|e| format!("ES256 key: {e}"))?,
        ),
        Alg::Rs256 => (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&bytes).map_err(|e| format!("RS256 key: {e}"))?,
        ),
    };
    let now_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let mut claims = serde_json::json!({
        "sub": args.sub,
        "channels": args.channels,
        "iat": now_s,
        "exp": now_s + args.ttl_s,
    });
    if !args.publish.is_empty() {
        claims["publish"] = serde_json::json!(args.publish);
    }
    let mut header = Header::new(alg);
    header.kid = args.kid;
    let token = encode(&header, &claims, &key).map_err(|e| format!("signing: {e}"))?;
    println!("{token}");
    Ok(())
}
