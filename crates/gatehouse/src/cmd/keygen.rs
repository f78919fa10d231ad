//! `gatehouse keygen`: a new random `cookie_secret` and `signing_key`, and
//! `cookie_host_prefix: true` (the safe default for a new config), ready to paste.

use std::process::ExitCode;

use base64::Engine;
use rand::RngCore;

pub fn run() -> ExitCode {
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    match gatehouse_auth::jwt::generate_signing_key_b64() {
        Ok(key) => {
            println!(
                "cookie_secret: {}",
                base64::engine::general_purpose::STANDARD.encode(secret)
            );
            println!("signing_key: {key}");
            println!(
                "# __Host- cookies: no other subdomain can set or overwrite them (drop this line to keep Pomerium's _pomerium, or to use cookie_domain)"
            );
            println!("cookie_host_prefix: true");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gatehouse keygen: {e}");
            ExitCode::from(2)
        }
    }
}
