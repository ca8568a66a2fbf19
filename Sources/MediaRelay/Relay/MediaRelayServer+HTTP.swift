import Reactor

// HTTP/1.1 as far as a player needs it: one request per connection (`Connection: close`), GET of a stream, POST/PUT
// of a published one. Every refusal is a short response with a text body, then the connection closes.
extension MediaRelayServer {
    func httpConnected(_ connection: TCPConnection) {
        let state = RelayConnection(kind: .http, maxHeadBytes: configuration.maxRequestHeadBytes)
        connection.context = state
        let timeout = configuration.requestHeadTimeout
        state.headTimer = connection.loop.schedule(after: timeout) { [weak connection] in
            guard let connection, case .head = state.phase else { return }
            connection.forceClose()
        }
    }

    func httpData(_ connection: TCPConnection, _ bytes: inout InboundBytes) {
        guard let state = connection.context as? RelayConnection else {
            _ = bytes.consumeAll()
            return
        }
        let input = bytes.consumeAll()
        switch state.phase {
        case .head(var parser):
            do {
                guard let (head, rest) = try parser.feed(input) else {
                    state.phase = .head(parser)
                    return
                }
                state.headTimer?.cancel()
                state.headTimer = nil
                state.phase = .resolving
                route(head, rest: rest, connection, state)
            } catch {
                counters.add(.badRequests)
                respond(connection, state, status: error.status, "\(error)")
            }
        case .publishing(let publisher):
            takeBody(input, publisher, connection, state)
        case .resolving, .viewing, .closing:
            break  // a viewer has nothing more to say; what it sends is dropped
        }
    }

    private func route(_ head: HTTPRequestHead, rest: [UInt8], _ connection: TCPConnection,
                       _ state: RelayConnection) {
        let path = head.path
        let isStream = path.hasPrefix("/live/") || path.hasPrefix("/vod/")
        let isPublish = path.hasPrefix("/publish/")
        guard isStream || isPublish else {
            counters.add(.notFound)
            respond(connection, state, status: 404, "no such path: \(path) (try /live/NAME.ts, /vod/NAME.ts)")
            return
        }
        let methodOK = isStream ? head.method == "GET" : head.method == "POST" || head.method == "PUT"
        guard methodOK else {
            counters.add(.badRequests)
            respond(connection, state, status: 405, "\(head.method) is not allowed on \(path)",
                    extraHeaders: "Allow: \(isStream ? "GET" : "POST, PUT")\r\n")
            return
        }
        let file = path.split(separator: "/", omittingEmptySubsequences: true).last.map(String.init) ?? ""
        let name = file.hasSuffix(".ts") ? String(file.dropLast(3)) : file
        guard ResourceCatalog.isValidName(name), path.split(separator: "/").count == 2 else {
            counters.add(.notFound)
            respond(connection, state, status: 404, "no such resource: \(file)")
            return
        }
        let room = head.queryValue("room") ?? ""
        guard Self.validNames(name, room) else {
            counters.add(.badRequests)
            respond(connection, state, status: 400,
                    "the room name is longer than \(ResourceCatalog.maxNameBytes) bytes")
            return
        }
        if isPublish {
            publish(name: name, room: room, head: head, rest: rest, connection, state)
            return
        }
        var start = Duration.zero
        if path.hasPrefix("/vod/"), let text = head.queryValue("start") {
            guard let seconds = Double(text), seconds >= 0, seconds.isFinite, seconds < 1e9 else {
                counters.add(.badRequests)
                respond(connection, state, status: 400, "start must be a number of seconds, got \(text)")
                return
            }
            start = .milliseconds(Int64(seconds * 1000))
        }
        guard takeViewerSlot() else {
            respond(connection, state, status: 503, "the relay is full (\(configuration.capacity) viewers)")
            return
        }
        state.holdsViewerSlot = true
        let chunked = head.version == "HTTP/1.1"
        resolveViewer(live: path.hasPrefix("/live/"), name: name, room: room, start: start, connection, state,
                      found: { [self] playback in
                          _ = HTTPViewerSink.responseHead(chunked: chunked).withUnsafeBytes {
                              connection.sendInLoop($0)
                          }
                          let queueLimit = configuration.maxViewerQueueBytes
                          let counters = self.counters
                          attach(connection, state, to: playback) {
                              HTTPViewerSink(connection: connection, chunked: chunked, queueLimit: queueLimit,
                                             counters: counters)
                          }
                      },
                      refused: { [self] refusal in refuse(refusal, connection, state) })
    }

    private func publish(name: String, room: String, head: HTTPRequestHead, rest: [UInt8],
                         _ connection: TCPConnection, _ state: RelayConnection) {
        guard let body = HTTPBodyDecoder(head: head) else {
            counters.add(.badRequests)
            respond(connection, state, status: 400, "the body's framing is not one the relay reads "
                        + "(Content-Length, or Transfer-Encoding: chunked)")
            return
        }
        switch publishedPlayback(name: name, room: room) {
        case .failure(let refusal):
            refuse(refusal, connection, state)
        case .success(let playback):
            let publisher = Publisher(playback: playback, body: body, now: sy_now())
            state.phase = .publishing(publisher)
            watchPublisher(publisher, connection)
            takeBody(rest, publisher, connection, state)
        }
    }

    /// Closes a publisher that sends nothing for `publisherIdleTimeout` (its stream ends).
    func watchPublisher(_ publisher: Publisher, _ connection: TCPConnection) {
        let timeout = configuration.publisherIdleTimeout
        let nanoseconds = UInt64(timeout.components.seconds) * 1_000_000_000
            + UInt64(timeout.components.attoseconds / 1_000_000_000)
        publisher.timer = connection.loop.scheduleRepeating(every: timeout / 4) { [weak connection] in
            guard let connection else { return }
            if sy_now() &- publisher.lastData > nanoseconds { connection.forceClose() }
        }
    }

    private func takeBody(_ bytes: some Collection<UInt8>, _ publisher: Publisher, _ connection: TCPConnection,
                          _ state: RelayConnection) {
        guard !bytes.isEmpty else { return }
        let stream: [UInt8]
        do {
            stream = try publisher.body?.feed(bytes) ?? Array(bytes)
        } catch {
            counters.add(.badRequests)
            respond(connection, state, status: 400, "bad request body: \(error)")
            return
        }
        if let problem = publisher.take(stream, now: sy_now()) {
            respond(connection, state, status: 415, "the published stream cannot be relayed: \(problem)")
            return
        }
        if publisher.body?.isComplete == true {
            respond(connection, state, status: 200, "published \(publisher.bytes) bytes")
        }
    }

    func refuse(_ refusal: Refusal, _ connection: TCPConnection, _ state: RelayConnection) {
        switch refusal {
        case .notFound(let name):
            counters.add(.notFound)
            respond(connection, state, status: 404, "no such resource: \(name)")
        case .full:
            respond(connection, state, status: 503, "the relay is full")
        case .badMedia(let why):
            logger.info("relay: a resource's file cannot be relayed", metadata: ["error.description": "\(why)"])
            respond(connection, state, status: 500, "the resource's file cannot be relayed: \(why)")
        case .alreadyPublished(let name):
            respond(connection, state, status: 409, "somebody publishes \(name) already")
        case .internalError(let why):
            respond(connection, state, status: 500, why)
        }
    }

    /// A short response with a text body; the connection closes after it (and the publisher's stream ends).
    func respond(_ connection: TCPConnection, _ state: RelayConnection, status: Int, _ text: String,
                 extraHeaders: String = "") {
        guard connection.isActive else { return }
        if case .publishing(let publisher) = state.phase {
            publisher.timer?.cancel()
            publisher.playback.endPush(reason: status == 200 ? nil : text)
        }
        releaseViewerSlot(state)
        state.phase = .closing
        logRefusal("http", connection, "\(status) \(text)")
        let body = text + "\n"
        let head = "HTTP/1.1 \(status) \(Self.reason(status))\r\nContent-Type: text/plain; charset=utf-8\r\n"
            + "Content-Length: \(body.utf8.count)\r\n\(extraHeaders)Connection: close\r\n\r\n"
        _ = Array((head + body).utf8).withUnsafeBytes { connection.sendInLoop($0) }
        connection.close()
    }

    static func reason(_ status: Int) -> String {
        switch status {
        case 200: return "OK"
        case 400: return "Bad Request"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 409: return "Conflict"
        case 415: return "Unsupported Media Type"
        case 431: return "Request Header Fields Too Large"
        case 500: return "Internal Server Error"
        case 503: return "Service Unavailable"
        case 505: return "HTTP Version Not Supported"
        default: return "Error"
        }
    }
}
