/// A bounded first-in first-out queue that makes room by dropping its oldest element: the reporter's queue
/// between the loops that receive reports and the task that writes them. A plain value; the reporter guards it
/// with a lock.
struct DropOldestQueue<Element> {
    /// Most elements held.
    let capacity: Int
    private var storage: [Element?]
    private var head = 0
    private(set) var count = 0
    /// Elements dropped to make room since the queue was created.
    private(set) var dropped = 0

    init(capacity: Int) {
        precondition(capacity >= 1, "capacity must be at least 1")
        self.capacity = capacity
        storage = Array(repeating: nil, count: capacity)
    }

    var isEmpty: Bool { count == 0 }

    /// Appends `element`, dropping the oldest one when full. Returns true when one was dropped.
    @discardableResult
    mutating func append(_ element: Element) -> Bool {
        if count == capacity {
            storage[head] = element
            head = (head + 1) % capacity
            dropped += 1
            return true
        }
        storage[(head + count) % capacity] = element
        count += 1
        return false
    }

    /// Removes the oldest element.
    mutating func popFirst() -> Element? {
        guard count > 0 else { return nil }
        let element = storage[head]
        storage[head] = nil
        head = (head + 1) % capacity
        count -= 1
        return element
    }
}
