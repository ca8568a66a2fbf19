/// An event loop as Storage sees it: what a statement driven by a loop needs (Storage does not depend on the reactor;
/// the database agent adapts its `EventLoop`). One thread runs the loop; ``watch(fd:read:write:onEvent:)`` and the
/// watch's methods are called on it only.
public protocol StorageLoop: AnyObject, Sendable {
    /// `true` on the loop's thread. Any thread.
    var inLoopThread: Bool { get }
    /// Runs `work` on the loop's thread, after what it is doing now. Any thread.
    func execute(_ work: @escaping @Sendable () -> Void)
    /// Starts watching `fd` (owned by the caller, who cancels the watch before closing it); `onEvent` runs on the
    /// loop's thread with (readable, writable), an error or hang-up counting as readable. Loop thread only.
    func watch(fd: Int32, read: Bool, write: Bool, onEvent: @escaping (_ readable: Bool, _ writable: Bool) -> Void)
        throws -> any StorageLoopWatch
}

/// A descriptor watched by a ``StorageLoop``. Loop thread only.
public protocol StorageLoopWatch: AnyObject {
    /// Changes what the descriptor is watched for.
    func update(read: Bool, write: Bool)
    /// Stops watching (the descriptor stays open). A no-op after the first call.
    func cancel()
}

extension StorageLoop {
    /// Runs `work` now when on the loop's thread, else posts it there.
    func run(_ work: @escaping @Sendable () -> Void) {
        if inLoopThread { work() } else { execute(work) }
    }
}
