//! A panic's message, for the error that names it.

/// What ended a task: its panic's message, or why it was cancelled.
pub(crate) fn join_error_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(panic) => panic_message(&*panic),
        Err(e) => e.to_string(),
    }
}

/// The message of a panic, from its payload (`panic!` with a literal gives
/// a `&str`, with arguments a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}
