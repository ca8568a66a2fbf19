import Logging
import Metrics
import Reactor
import Storage
import Synchronization

/// Where decoded reports go: the writer's queue when it has room, else the connection they came on waits.
///
///     report --(more results than maxReportResults)--> refused (counted; one log line per episode)
///            --offer--> BatchWriter (bounded in reports and bytes)
///            --full--> parked on its connection; reading paused; the writer's "room" callback hops to the
///                      connection's loop, offers the parked reports in order, and resumes reading once they are in
///
/// A paused connection is not read, so the only reports parked on it are those of the read that filled the queue
/// (the frames of one read buffer). A connection that closes while reports are parked on it keeps them queued until
/// room is made: nothing accepted is lost. Safe to call from any thread; ``accept(_:on:)`` on the connection's loop.
final class ReporterIntake: Sendable {
    let writer: BatchWriter<[Reporter.Row]>
    private let maxResults: Int
    private let logger: Logger
    private let metrics: Reporter.Metrics
    private let received = Atomic<Int>(0)
    private let refusedCount = Atomic<Int>(0)
    private let pausesCount = Atomic<Int>(0)
    private let parkedCount = Atomic<Int>(0)
    /// When the last refusal was logged (monotonic ns; 0: never): refusals within a minute of it are one episode.
    private let lastRefusalLog = Atomic<UInt64>(0)
    /// When the last pause was logged (monotonic ns; 0: never): pauses within a minute of it are one episode (a
    /// connection that keeps the queue full is paused and resumed with every batch written).
    private let lastPauseLog = Atomic<UInt64>(0)

    static let refusalEpisodeNanoseconds: UInt64 = 60_000_000_000

    init(writer: BatchWriter<[Reporter.Row]>, maxResults: Int, logger: Logger, metrics: Reporter.Metrics) {
        self.writer = writer
        self.maxResults = maxResults
        self.logger = logger
        self.metrics = metrics
    }

    /// Reports decoded.
    var receivedReports: Int { received.load(ordering: .relaxed) }
    /// Reports refused for their size.
    var refused: Int { refusedCount.load(ordering: .relaxed) }
    /// Times a connection was paused.
    var pauses: Int { pausesCount.load(ordering: .relaxed) }
    /// Reports waiting on paused (or closed) connections for room in the queue.
    var parked: Int { parkedCount.load(ordering: .relaxed) }

    /// The reports held on one connection while it is paused. Loop thread of the connection only.
    final class Session: @unchecked Sendable {
        // @unchecked Sendable: touched only on its connection's loop (the room callback hops there with execute).
        weak var connection: TCPConnection?
        let loop: EventLoop
        var parked: [[Reporter.Row]] = []

        init(_ connection: TCPConnection) {
            self.connection = connection
            loop = connection.loop
        }
    }

    /// Counts a decoded report; false (and refused, counted, logged once per episode) when it has more results than
    /// the limit. Loop thread.
    func admit(results: Int, from connection: TCPConnection) -> Bool {
        received.wrappingAdd(1, ordering: .relaxed)
        metrics.received.increment()
        guard results > maxResults else { return true }
        let total = refusedCount.wrappingAdd(1, ordering: .relaxed).newValue
        metrics.refused.increment()
        if Self.startsEpisode(lastRefusalLog) {
            logger.info("reporter: refusing reports with too many results (logged once a minute)", metadata: [
                "peer.address": "\(connection.peerAddress)", "report.results": "\(results)",
                "reporter.max_report_results": "\(maxResults)", "reporter.refused_total": "\(total)",
            ])
        }
        return false
    }

    /// Queues the rows of one report, or parks them on `connection` and pauses it. Loop thread of `connection`.
    func accept(_ rows: [Reporter.Row], on connection: TCPConnection) {
        let session = session(of: connection)
        if session.parked.isEmpty && writer.offer(rows) { return }
        session.parked.append(rows)
        parkedCount.wrappingAdd(1, ordering: .relaxed)
        guard session.parked.count == 1 else { return }  // paused and waiting already
        connection.setReadingEnabled(false)
        pausesCount.wrappingAdd(1, ordering: .relaxed)
        metrics.paused.increment()
        if Self.startsEpisode(lastPauseLog) {
            let stats = writer.statistics
            logger.info("reporter: queue full, pausing agent connections until the database catches up", metadata: [
                "peer.address": "\(connection.peerAddress)", "reporter.queued": "\(stats.queued)",
                "reporter.queued_bytes": "\(stats.queuedCost)", "reporter.pauses_total": "\(pauses)",
            ])
        }
        waitForRoom(session)
    }

    /// True (once) when the last line of this kind was logged a minute ago or never: a new episode.
    private static func startsEpisode(_ lastLog: borrowing Atomic<UInt64>) -> Bool {
        let now = SystemInfo.monotonicNanoseconds()
        let last = lastLog.load(ordering: .relaxed)
        guard last == 0 || now &- last >= refusalEpisodeNanoseconds else { return false }
        return lastLog.compareExchange(expected: last, desired: max(1, now), ordering: .relaxed).exchanged
    }

    private func session(of connection: TCPConnection) -> Session {
        if let session = connection.context as? Session { return session }
        let session = Session(connection)
        connection.context = session
        return session
    }

    /// Asks the writer to call back when the first parked report fits. Loop thread of the session.
    private func waitForRoom(_ session: Session) {
        guard let first = session.parked.first else { return }
        let cost = ReporterConfiguration.queuedBytes(results: first.count)
        // False: the writer has stopped; the parked reports stay counted as queued (not written).
        writer.notifyWhenRoom(forCost: cost) { [self] in
            session.loop.execute { [self] in drain(session) }
        }
    }

    /// Offers the parked reports in order; reading resumes once they are all queued. Loop thread of the session.
    private func drain(_ session: Session) {
        var taken = 0
        while let first = session.parked.first, writer.offer(first) {
            session.parked.removeFirst()
            taken += 1
        }
        if taken > 0 { parkedCount.wrappingAdd(-taken, ordering: .relaxed) }
        guard session.parked.isEmpty else {
            waitForRoom(session)
            return
        }
        session.connection?.setReadingEnabled(true)
    }
}
