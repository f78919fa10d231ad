//! The hidden `backend-launch` and `backend-reap`, which `serve` runs for each backend: the
//! work is the backends crate's; this maps its result to an exit code.

use std::process::ExitCode;

/// `backend-launch SPEC`: confine this process as one backend and exec it.
pub fn launch(spec: &str) -> ExitCode {
    exit_code(gatehouse_backends::launch::launch_main(spec))
}

/// `backend-reap UID`: end every process of one backend uid.
pub fn reap(uid: &str) -> ExitCode {
    exit_code(gatehouse_backends::launch::reap_main(uid))
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
