//! Spawning a reactor thread (a node shard or a load generator worker): start it, report
//! whether its start-up worked, then run its loop. Start-up happens inside the thread
//! because a ring is driven by the thread that enables it and the file table is per thread.

use std::sync::mpsc::Sender;
use std::thread::JoinHandle;

/// Spawns thread `name`: runs `start` (pinning, unshare, ring set-up), sends its outcome on
/// `ready`, and on success runs `run` on what `start` built, returning its report.
pub fn spawn<S, R>(
    name: String,
    ready: Sender<Result<(), String>>,
    start: impl FnOnce() -> Result<S, String> + Send + 'static,
    run: impl FnOnce(S) -> R + Send + 'static,
) -> JoinHandle<Option<R>>
where
    R: Send + 'static,
{
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let state = match start() {
                Ok(state) => state,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return None;
                }
            };
            let _ = ready.send(Ok(()));
            drop(ready);
            Some(run(state))
        })
        .expect("spawning a reactor thread")
}
