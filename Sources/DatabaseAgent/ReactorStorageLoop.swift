import Reactor
import Storage

/// A reactor loop as Storage's ``StorageLoop``: the agent's connections drive PostgreSQL statements on their own loop
/// (the socket watched with a ``DescriptorWatch``), with no worker thread between the caller and the database.
final class ReactorStorageLoop: StorageLoop {
    let loop: EventLoop

    init(_ loop: EventLoop) {
        self.loop = loop
    }

    var inLoopThread: Bool { loop.inLoopThread }

    func execute(_ work: @escaping @Sendable () -> Void) { loop.execute(work) }

    func watch(fd: Int32, read: Bool, write: Bool, onEvent: @escaping (_ readable: Bool, _ writable: Bool) -> Void)
        throws -> any StorageLoopWatch
    {
        Watch(try DescriptorWatch(fd: fd, interest: Self.interest(read: read, write: write), loop: loop,
                                  onEvent: onEvent))
    }

    static func interest(read: Bool, write: Bool) -> IOInterest {
        var interest: IOInterest = []
        if read { interest.insert(.read) }
        if write { interest.insert(.write) }
        return interest
    }

    private final class Watch: StorageLoopWatch {
        let watch: DescriptorWatch
        init(_ watch: DescriptorWatch) { self.watch = watch }
        func update(read: Bool, write: Bool) { watch.interest = ReactorStorageLoop.interest(read: read, write: write) }
        func cancel() { watch.cancel() }
    }
}
