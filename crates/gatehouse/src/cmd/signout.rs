//! `gatehouse sign-out EMAIL`: an administrator's sign-out, sent to the running `serve`
//! through the control socket in its `state_dir` (`gatehouse_proxy::control`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

pub fn run(path: &Path, email: &str) -> ExitCode {
    let config = match gatehouse_config::load(path, &gatehouse_config::ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let socket = config.state_dir.join(gatehouse_proxy::control::SOCKET_FILE);
    let fail = |what: String| {
        eprintln!("gatehouse sign-out: {what}");
        ExitCode::from(2)
    };
    let mut stream = match UnixStream::connect(&socket) {
        Ok(s) => s,
        Err(e) => {
            return fail(format!(
                "cannot reach the running Gatehouse at {} ({e}); is `gatehouse serve` running \
                 with this config, and are you the user it runs as (or root)?",
                socket.display()
            ));
        }
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let command = serde_json::json!({ "sign_out": email });
    if let Err(e) = stream.write_all(format!("{command}\n").as_bytes()) {
        return fail(format!("could not send the command ({e})"));
    }
    let mut answer = String::new();
    if let Err(e) = BufReader::new(&stream).read_line(&mut answer) {
        return fail(format!("no answer from the running Gatehouse ({e})"));
    }
    let v: serde_json::Value = serde_json::from_str(answer.trim()).unwrap_or_default();
    match v.get("ok") {
        Some(serde_json::Value::Bool(true)) => {
            println!(
                "{email}: signed out everywhere ({} access token(s) revoked, {} open stream(s) ended)",
                v["tokens_revoked"], v["streams_ended"]
            );
            ExitCode::SUCCESS
        }
        _ => fail(
            v.get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("the running Gatehouse gave no answer")
                .to_string(),
        ),
    }
}
