//! What a Redis error means for the router: Redis out of reach (the router degrades until
//! it answers again), or a bug that waiting for Redis would not cure.

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::engine::EngineError;

/// Sorts a failed Redis call into an [`EngineError`]:
/// - [`EngineError::Protocol`]: Redis answered, and the answer shows the engine and its
///   data or scripts disagree: a reply of another type than the call expects, a key of
///   another type than the scripts keep there (`WRONGTYPE`), a script that failed at run
///   time (its error names `user_script`). Every retry would meet the same answer.
/// - [`EngineError::Unavailable`]: everything else. The connection failed, timed out or
///   was refused; or Redis refuses to serve now (`LOADING`, `READONLY` after a failover,
///   `OOM` under `noeviction`, `BUSY`, `MASTERDOWN`, authentication, `ERR max number of
///   clients`): what the router waits out, degraded.
pub(super) fn classify(error: RedisError) -> EngineError {
    let script_failed = error.kind() == ErrorKind::Server(ServerErrorKind::ResponseError)
        && error.detail().is_some_and(|detail| detail.contains("user_script"));
    let bug = error.kind() == ErrorKind::UnexpectedReturnType || error.code() == Some("WRONGTYPE") || script_failed;
    if bug { EngineError::Protocol(error.to_string()) } else { EngineError::Unavailable(error.to_string()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_protocol(error: RedisError) -> bool {
        matches!(classify(error), EngineError::Protocol(_))
    }

    #[test]
    fn replies_the_engine_cannot_read_are_bugs_and_refusals_are_outages() {
        let wrong_type = RedisError::from((ErrorKind::UnexpectedReturnType, "Response was of incompatible type"));
        assert!(is_protocol(wrong_type));
        assert!(is_protocol(redis::make_extension_error("WRONGTYPE".into(), Some("Operation against a key".into()))));
        let script = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "An error was signalled by the server",
            "user_script:3: attempt to compare nil with number script: 1f2e, on @user_script:3.".to_owned(),
        ));
        assert!(is_protocol(script));

        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let too_many = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "An error was signalled by the server",
            "max number of clients reached".to_owned(),
        ));
        let read_only = RedisError::from((ErrorKind::Server(ServerErrorKind::ReadOnly), "You can't write"));
        let out_of_memory = redis::make_extension_error("OOM".into(), Some("command not allowed".into()));
        for outage in [refused, too_many, read_only, out_of_memory] {
            assert!(matches!(classify(outage), EngineError::Unavailable(_)));
        }
    }
}
