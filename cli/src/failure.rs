//! How a command fails, and the exit status each failure maps to.

use flotilla_client::ClientError;
use flotilla_protocol::client::ApiErrorKind;

/// Every exit status and what it means, as `--help` and the manual page
/// list them (kept beside [`Failure::exit_status`], which maps to them).
pub const EXIT_STATUSES: [(u8, &str); 5] = [
    (0, "success"),
    (
        1,
        "a task failed or was cancelled (the error is on stderr), or another runtime error",
    ),
    (
        2,
        "usage or configuration error (bad arguments, bad JSON, unknown servable, bad site file, daemon already running)",
    ),
    (
        3,
        "the daemon is unreachable (not running, or not answering; see --home)",
    ),
    (
        4,
        "a result is not ready yet (still queued or running when the wait ended)",
    ),
];

/// The exit statuses as the end of `--help`.
pub fn exit_status_help() -> String {
    let mut text = String::from("Exit status:");
    for (code, meaning) in EXIT_STATUSES {
        text.push_str(&format!("\n  {code}  {meaning}"));
    }
    text
}

/// A command that did not succeed, mapped to the documented exit status.
#[derive(Debug)]
pub enum Failure {
    /// A task failed (the message was printed already) or another error.
    Other(anyhow::Error),
    /// A task failed; nothing more to print.
    TaskFailed,
    /// Usage or configuration error.
    Usage(anyhow::Error),
    /// The daemon cannot be reached.
    Unreachable(anyhow::Error),
    /// A result is not ready.
    NotReady,
}

impl Failure {
    /// Classifies a client error.
    pub fn from_client(e: ClientError) -> Failure {
        match e {
            e if e.is_unreachable() => Failure::Unreachable(e.into()),
            // The request named something that does not exist or conflicts
            // with the catalog: the user's input, not a runtime failure.
            ClientError::Refused(ref api)
                if matches!(
                    api.kind,
                    ApiErrorKind::BadRequest | ApiErrorKind::NotFound | ApiErrorKind::Conflict
                ) =>
            {
                Failure::Usage(e.into())
            }
            // Refused input, only found out before it was sent.
            e @ ClientError::TooLarge { .. } => Failure::Usage(e.into()),
            e => Failure::Other(e.into()),
        }
    }

    /// The documented exit status, and the message still to print, if any.
    pub fn exit_status(self) -> (u8, Option<anyhow::Error>) {
        match self {
            Failure::TaskFailed => (1, None),
            Failure::NotReady => (4, None),
            Failure::Other(e) => (1, Some(e)),
            Failure::Usage(e) => (2, Some(e)),
            Failure::Unreachable(e) => (3, Some(e)),
        }
    }
}

impl From<flotilla_client::ConvertError> for Failure {
    fn from(e: flotilla_client::ConvertError) -> Self {
        Failure::Other(e.into())
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}
