/// Something the loop dispatches readiness to (a connection, an acceptor, a wakeup descriptor).
protocol EventHandler: AnyObject {
    /// Loop thread only. `events` holds `PollBits`.
    func handleEvents(_ events: UInt32)
    /// The loop has returned from `run()` for good with this handler still registered: release what it will never
    /// serve (a connection closes, firing its close callbacks). The loop forgets the handler afterwards. Runs once,
    /// as the loop's last act on its thread; its task queue is closed by then and it takes no more timers.
    func loopDidStop()
}

extension EventHandler {
    /// Nothing to release: the owner (a server's listener, a signal watcher) closes the descriptor itself.
    func loopDidStop() {}
}
