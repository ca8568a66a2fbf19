/// The bytes that have arrived on a connection and not been consumed yet, lent to a data callback.
///
/// ```
///  base                 readerIndex                        count
///   | consumed (earlier) |   readable: handler looks here     |
/// ```
///
/// The view is valid only during the callback. Consume what you handled (`moveReaderIndex`, `readBytes`,
/// `consumeAll`); whatever is left is kept by the connection and shown again, followed by new bytes, next time.
/// Bytes are never lost, duplicated or reordered. Most reads land in the loop's scratch area and whole messages
/// are handled from there without a copy; only an unconsumed tail is copied into the connection's own buffer.
public struct InboundBytes {
    @usableFromInline let base: UnsafeRawPointer
    /// Total bytes in the view.
    public let count: Int
    @usableFromInline var _readerIndex: Int
    /// Bytes consumed so far.
    @inlinable public var readerIndex: Int { _readerIndex }

    /// Bytes at the start of the view that were shown before and left unconsumed (0 when the view holds only new
    /// bytes): a message that spans reads began before this call.
    public let carriedBytes: Int

    @inlinable
    init(base: UnsafeRawPointer, count: Int, carriedBytes: Int = 0) {
        self.base = base
        self.count = count
        self.carriedBytes = carriedBytes
        self._readerIndex = 0
    }

    /// Bytes not yet consumed.
    @inlinable public var readableBytes: Int { count - readerIndex }

    /// The unconsumed bytes (valid during the callback only).
    @inlinable public var readableView: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base + readerIndex, count: count - readerIndex)
    }

    /// Marks `n` bytes consumed.
    @inlinable public mutating func moveReaderIndex(forwardBy n: Int) {
        precondition(n >= 0 && n <= readableBytes, "consumed more than is readable")
        _readerIndex += n
    }

    /// Consumes everything and returns it (valid during the callback only).
    @inlinable @discardableResult
    public mutating func consumeAll() -> UnsafeRawBufferPointer {
        let v = readableView
        _readerIndex = count
        return v
    }

    /// Consumes `n` bytes and returns them (valid during the callback only); nil if fewer are readable.
    @inlinable public mutating func readBytes(_ n: Int) -> UnsafeRawBufferPointer? {
        guard n >= 0 && n <= readableBytes else { return nil }
        let v = UnsafeRawBufferPointer(start: base + readerIndex, count: n)
        _readerIndex += n
        return v
    }

    /// Reads a little-endian Int32 at `offset` past the reader index without consuming; nil if not all there.
    @inlinable public func peekInt32LE(at offset: Int = 0) -> Int32? {
        guard offset >= 0 && offset + 4 <= readableBytes else { return nil }
        return Int32(littleEndian: (base + readerIndex + offset).loadUnaligned(as: Int32.self))
    }
}
