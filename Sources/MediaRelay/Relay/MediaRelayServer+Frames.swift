import Messaging
import Reactor
import SwiftProtobuf

// The frame protocol (ids 400+): a viewer subscribes once and reads chunk frames; a publisher announces its stream
// and sends it as publish chunks. A refusal is an Error frame (id 403), then the connection closes.
extension MediaRelayServer {
    func frameSubscribe(_ request: Switchyard_Media_Subscribe, _ connection: TCPConnection) {
        guard let state = firstFrame(connection, request.resource, request.room, "one subscribe per connection")
        else { return }
        guard takeViewerSlot() else {
            frameError(connection, .full, "the relay is full (\(configuration.capacity) viewers)")
            return
        }
        state.holdsViewerSlot = true
        let start = Duration.milliseconds(Int64(min(request.startMs, UInt64(Int64.max / 1_000_000))))
        resolveViewer(live: request.mode == .live, name: request.resource, room: request.room, start: start,
                      connection, state,
                      found: { [self] playback in
                          let queueLimit = configuration.maxViewerQueueBytes
                          attach(connection, state, to: playback) {
                              FrameViewerSink(connection: connection, queueLimit: queueLimit)
                          }
                      },
                      refused: { [self] refusal in frameRefuse(refusal, connection) })
    }

    func framePublish(_ request: Switchyard_Media_Publish, _ connection: TCPConnection) {
        guard let state = firstFrame(connection, request.resource, request.room,
                                     "publish must be the first frame of its connection")
        else { return }
        switch publishedPlayback(name: request.resource, room: request.room) {
        case .failure(let refusal):
            frameRefuse(refusal, connection)
        case .success(let playback):
            let publisher = Publisher(playback: playback, body: nil, now: sy_now())
            state.phase = .publishing(publisher)
            watchPublisher(publisher, connection)
        }
    }

    /// The state of a connection whose first frame (a subscribe or a publish) names `resource` in `room`; nil, after
    /// an error frame, when it is not its first (`notFirst` says so) or the names are bad.
    private func firstFrame(_ connection: TCPConnection, _ resource: String, _ room: String, _ notFirst: String)
        -> RelayConnection?
    {
        guard let state = connection.context as? RelayConnection, case .resolving = state.phase,
              !state.holdsViewerSlot else {
            frameError(connection, .badRequest, notFirst)
            return nil
        }
        guard Self.validNames(resource, room) else {
            counters.add(.badRequests)
            frameError(connection, .badRequest, "bad resource or room name")
            return nil
        }
        return state
    }

    func framePublishedChunk(_ chunk: Switchyard_Media_Chunk, _ connection: TCPConnection) {
        guard let state = connection.context as? RelayConnection, case .publishing(let publisher) = state.phase else {
            frameError(connection, .badRequest, "a publish chunk before a publish")
            return
        }
        if let problem = publisher.take(chunk.data, now: sy_now()) {
            frameError(connection, .badMedia, "the published stream cannot be relayed: \(problem)")
        }
    }

    func frameRefuse(_ refusal: Refusal, _ connection: TCPConnection) {
        switch refusal {
        case .notFound(let name):
            counters.add(.notFound)
            frameError(connection, .noSuchResource, "no such resource: \(name)")
        case .full:
            frameError(connection, .full, "the relay is full")
        case .badMedia(let why):
            logger.info("relay: a resource's file cannot be relayed", metadata: ["error.description": "\(why)"])
            frameError(connection, .badMedia, "the resource's file cannot be relayed: \(why)")
        case .alreadyPublished(let name):
            frameError(connection, .alreadyPublished, "somebody publishes \(name) already")
        case .internalError(let why):
            frameError(connection, .unknown, why)
        }
    }

    /// Sends an Error frame and closes after it (a publisher's stream ends, a viewer's slot is freed on close).
    func frameError(_ connection: TCPConnection, _ code: Switchyard_Media_ErrorCode, _ reason: String) {
        guard connection.isActive else { return }
        logRefusal("frames", connection, reason)
        var message = Switchyard_Media_Error()
        message.code = code
        message.reason = reason
        if let body = try? message.serializedBytes() as [UInt8] {
            body.withUnsafeBytes { _ = connection.sendFrameInLoop(messageID: MediaMessageID.error.rawValue, body: $0) }
        }
        // A viewer or publisher keeps its phase: the close takes it out of its playback.
        if let state = connection.context as? RelayConnection, case .resolving = state.phase { state.phase = .closing }
        connection.close()
    }
}
