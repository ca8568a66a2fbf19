/// An event loop is a task executor: async code that prefers a loop runs on the loop's thread, so a continuation
/// the loop resumes (a reply read by a client on that loop) carries on right there, after the current handler,
/// instead of waking a thread of the global executor.
///
/// ```swift
/// let client = try LoadBalanceClient()
/// Task(executorPreference: client.loop) {
///     let result = try await client.getHost(modid: 7, cmdid: 1)   // no thread hop on the way back
/// }
/// ```
///
/// Code running this way runs on the loop thread: it must not block, like any handler; and the loop must outlive
/// it (a job handed to a loop that has stopped never runs).
extension EventLoop: TaskExecutor {
    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
