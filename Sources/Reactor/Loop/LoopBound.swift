/// A value that belongs to one loop: it may be handed to any thread, but read and written on that loop's thread
/// only, and every access checks it.
///
/// Use it to carry a value that is not `Sendable` (an event handler, a list of connections) into a task that runs on
/// the loop owning it. Creating the box is safe on any thread (the value is handed over to the loop then); reading or
/// writing `value` elsewhere stops the process, in release builds too (a box is used when work moves to a loop, not
/// per message, so the check costs nothing that matters). Once the loop has returned from `run()` for good no thread
/// runs it, and whoever holds the box may release what it holds (`EventLoop.executeOrRunIfStopped`).
public struct LoopBound<Value>: @unchecked Sendable {
    // @unchecked Sendable: `storage` is only read or written through `value`, which checks that the caller runs
    // `loop` (or that the loop has stopped for good, when no thread runs it), so one thread at a time touches it.

    /// The loop whose thread may access `value`.
    public let loop: EventLoop
    private var storage: Value

    /// Binds `value` to `loop`. Safe to call from any thread.
    public init(_ value: Value, loop: EventLoop) {
        self.loop = loop
        self.storage = value
    }

    /// The value. Loop thread only (or any thread once the loop has stopped for good): elsewhere the process stops.
    public var value: Value {
        get {
            loop.preconditionOwned("LoopBound read")
            return storage
        }
        set {
            loop.preconditionOwned("LoopBound write")
            storage = newValue
        }
    }
}
