@testable import Reactor
import Testing

/// What can happen to a connection, as `TCPConnection` reports it to its state machine.
enum MachineEvent: CaseIterable, CustomStringConvertible, Sendable {
    /// Read returned 0 with nothing queued / with output still queued.
    case peerFIN, peerFINWithOutputQueued
    /// A reset or another socket error, a hang-up, the linger timeout, the peer's FIN while lingering.
    case closeNow
    /// `forceClose()`, or a failed write.
    case abort
    /// `close()` with nothing queued / with output queued.
    case closeGracefully, closeGracefullyWithOutputQueued
    /// The output queue emptied.
    case drained

    var description: String {
        switch self {
        case .peerFIN: "peer FIN"
        case .peerFINWithOutputQueued: "peer FIN (output queued)"
        case .closeNow: "reset/error/timeout"
        case .abort: "forceClose/write error"
        case .closeGracefully: "close()"
        case .closeGracefullyWithOutputQueued: "close() (output queued)"
        case .drained: "output drained"
        }
    }

    func apply(to m: inout ConnectionStateMachine) -> ConnectionStateMachine.Action {
        switch self {
        case .peerFIN: m.peerClosed(outputEmpty: true)
        case .peerFINWithOutputQueued: m.peerClosed(outputEmpty: false)
        case .closeNow: m.closeNow()
        case .abort: m.abort()
        case .closeGracefully: m.closeGracefully(outputEmpty: true)
        case .closeGracefullyWithOutputQueued: m.closeGracefully(outputEmpty: false)
        case .drained: m.outputDrained()
        }
    }
}

private func connected() -> ConnectionStateMachine {
    var m = ConnectionStateMachine()
    m.registered()
    return m
}

/// Every sequence of `length` events.
private func sequences(length: Int) -> [[MachineEvent]] {
    if length == 0 { return [[]] }
    return sequences(length: length - 1).flatMap { s in MachineEvent.allCases.map { s + [$0] } }
}

@Suite("The connection state machine: every transition, and exactly one close")
struct ConnectionStateMachineTests {
    @Test("connecting -> connected on registration; a failed registration is closed without a close action")
    func registration() {
        var m = ConnectionStateMachine()
        #expect(m.state == .connecting)
        #expect(!m.isConnected)
        m.registered()
        #expect(m.state == .connected)
        #expect(m.isConnected)

        var failed = ConnectionStateMachine()
        failed.registrationFailed()
        #expect(failed.isClosed)
        for event in MachineEvent.allCases {
            #expect(event.apply(to: &failed) == .none, "\(event)")
        }
    }

    @Test("the peer's FIN with nothing queued closes at once")
    func peerFINCloses() {
        var m = connected()
        #expect(m.peerClosed(outputEmpty: true) == .close)
        #expect(m.isClosed)
    }

    @Test("the peer's FIN with output queued: flush first (half-close), then close when it drains")
    func peerFINFlushesFirst() {
        var m = connected()
        #expect(m.peerClosed(outputEmpty: false) == .flush)
        #expect(m.state == .closingAfterFlush(peerClosed: true))
        #expect(!m.isConnected)  // no more sends or reads
        #expect(m.outputDrained() == .close)
        #expect(m.isClosed)
    }

    @Test("close() with nothing queued half-closes at once; the peer's FIN (or the timeout) then closes")
    func gracefulCloseEmpty() {
        var m = connected()
        #expect(m.closeGracefully(outputEmpty: true) == .halfClose)
        #expect(m.state == .lingering)
        #expect(m.closeNow() == .close)
        #expect(m.isClosed)
    }

    @Test("close() with output queued: flush, then half-close, then close")
    func gracefulCloseFlushes() {
        var m = connected()
        #expect(m.closeGracefully(outputEmpty: false) == .flush)
        #expect(m.state == .closingAfterFlush(peerClosed: false))
        #expect(m.outputDrained() == .halfClose)
        #expect(m.state == .lingering)
        #expect(m.closeNow() == .close)
    }

    @Test("a reset or error closes from every open state", arguments: [
        ConnectionStateMachine.State.connected, .closingAfterFlush(peerClosed: true),
        .closingAfterFlush(peerClosed: false), .lingering,
    ])
    func resetClosesFromAnyOpenState(state: ConnectionStateMachine.State) {
        var m = connected()
        switch state {
        case .closingAfterFlush(let peerClosed):
            _ = peerClosed ? m.peerClosed(outputEmpty: false) : m.closeGracefully(outputEmpty: false)
        case .lingering: _ = m.closeGracefully(outputEmpty: true)
        default: break
        }
        #expect(m.state == state)
        #expect(m.closeNow() == .close)
        #expect(m.isClosed)
        #expect(m.closeNow() == .none)
    }

    @Test("forceClose (abort) closes at once from every open state")
    func abortCloses() {
        let setups: [MachineEvent] = [
            .closeGracefully, .closeGracefullyWithOutputQueued, .peerFINWithOutputQueued, .drained,
        ]
        for setup in setups {
            var m = connected()
            _ = setup.apply(to: &m)
            #expect(m.abort() == .close, "after \(setup)")
            #expect(m.isClosed)
            #expect(m.abort() == .none)
        }
    }

    @Test("what does not apply changes nothing: close() twice, drained while connected, a FIN while closing")
    func inapplicableEvents() {
        var m = connected()
        #expect(m.outputDrained() == .none)
        #expect(m.state == .connected)
        _ = m.closeGracefully(outputEmpty: false)
        #expect(m.closeGracefully(outputEmpty: true) == .none)
        #expect(m.peerClosed(outputEmpty: true) == .none)
        #expect(m.state == .closingAfterFlush(peerClosed: false))
        _ = m.outputDrained()
        #expect(m.outputDrained() == .none)
        #expect(m.closeGracefully(outputEmpty: true) == .none)
        #expect(m.state == .lingering)
    }

    @Test("during the data callback a close waits for it to return, then happens once", arguments: [
        MachineEvent.closeNow, .abort, .peerFIN,
    ])
    func closeDeferredDuringDispatch(event: MachineEvent) {
        var m = connected()
        m.beginDispatch()
        #expect(event.apply(to: &m) == .none)
        #expect(m.isClosePending)
        #expect(!m.isClosed)
        if event == .abort {
            // forceClose in the callback: nothing more is sent or read meanwhile.
            #expect(!m.isConnected)
        }
        // More closes in the same callback add nothing.
        #expect(m.closeNow() == .none)
        #expect(m.abort() == .none)
        #expect(m.endDispatch() == .close)
        #expect(m.isClosed)
        #expect(!m.isClosePending)
        #expect(m.closeNow() == .none)
    }

    @Test("close() inside the data callback half-closes at once (no close pending)")
    func gracefulCloseDuringDispatch() {
        var m = connected()
        m.beginDispatch()
        #expect(m.closeGracefully(outputEmpty: true) == .halfClose)
        #expect(m.isDispatching)
        #expect(m.endDispatch() == .none)
        #expect(m.state == .lingering)
    }

    @Test("a callback that closes nothing returns to the same state")
    func dispatchWithoutClose() {
        var m = connected()
        m.beginDispatch()
        #expect(m.endDispatch() == .none)
        #expect(m.state == .connected)
        #expect(!m.isDispatching)
    }

    @Test("exactly one close callback: any three events after connecting, then a reset, close exactly once")
    func exactlyOnceCloseOutsideCallbacks() {
        for events in sequences(length: 3) {
            var m = connected()
            var closes = 0
            for event in events + [.closeNow] where event.apply(to: &m) == .close { closes += 1 }
            #expect(closes == 1, "\(events)")
            #expect(m.isClosed)
        }
    }

    @Test("exactly one close callback when the events come inside the data callback, a reset arriving after it")
    func exactlyOnceCloseAroundCallbacks() {
        for events in sequences(length: 3) {
            var m = connected()
            var closes = 0
            m.beginDispatch()
            for event in events where event.apply(to: &m) == .close { closes += 1 }
            if m.endDispatch() == .close { closes += 1 }
            if m.closeNow() == .close { closes += 1 }
            #expect(closes == 1, "\(events)")
            #expect(m.isClosed)
        }
    }

    @Test("a peer that closes or resets leads to exactly one close, whatever was queued and however it ends",
          arguments: [
              [MachineEvent.peerFIN], [.peerFIN, .closeNow], [.closeNow, .peerFIN], [.closeNow, .closeNow],
              [.peerFINWithOutputQueued, .drained], [.peerFINWithOutputQueued, .closeNow, .drained],
              [.peerFINWithOutputQueued, .abort], [.closeGracefully, .closeNow, .closeNow],
              [.closeGracefullyWithOutputQueued, .peerFIN, .drained, .closeNow],
          ])
    func peerEndsExactlyOnce(events: [MachineEvent]) {
        var m = connected()
        let closes = events.map { $0.apply(to: &m) }.filter { $0 == .close }.count
        #expect(closes == 1)
        #expect(m.isClosed)
    }
}
