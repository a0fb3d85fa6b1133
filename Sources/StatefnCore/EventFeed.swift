// The event log (DESIGN.md section 2): pages of an entity's events, and the live feed that streams them as
// server-sent events. No thread waits per subscriber: each is an `HTTPStream`, and one loop per replica reads what
// is new for every subscribed entity in one indexed statement per interval (a local commit, or NOTIFY from another
// replica, wakes it sooner).
import Logging
import StatefnHTTP
import StatefnJSON
import StatefnPostgres
import Synchronization

public struct EventFeedConfiguration: Sendable {
    /// How often the feed reads new events while it has subscribers and nothing woke it.
    public var pollInterval: Duration = .milliseconds(200)
    /// Live subscribers per replica; one more gets 503 with Retry-After.
    public var maxSubscribers = 1000
    /// A comment line to every subscriber that got nothing for this long, so that proxies keep the stream open.
    public var heartbeat: Duration = .seconds(15)
    public init() {}
}

/// One stored event, as the list and the stream show it.
struct StoredEvent: Sendable {
    var key: EntityKey
    var seq: Int64
    var event: JSONValue
    var principal: JSONValue
    var atMs: Int64

    var json: JSONValue {
        ["seq": .integer(seq), "event": event, "principal": principal, "at": .string(Timestamp.rfc3339(ms: atMs))]
    }

    /// `id: <seq>`, `event: <type>`, `data: <json>`: one SSE frame.
    var frame: [UInt8] {
        var type = "event"
        if let name = event["type"]?.stringValue, !name.isEmpty, name.utf8.count <= 200,
            !name.utf8.contains(where: { $0 < 0x20 })
        {
            type = name
        }
        return Array("id: \(seq)\nevent: \(type)\ndata: \(json.encodedString())\n\n".utf8)
    }
}

/// The event log's SQL.
struct EventStore: Sendable {
    let pool: PostgresPool

    /// Up to `limit` events of `key` after `seq`, oldest first.
    func events(of key: EntityKey, after seq: Int64, limit: Int) async throws -> [StoredEvent] {
        let result = try await pool.read(
            """
            SELECT seq, event::text, principal::text, CAST(extract(epoch FROM created_at) * 1000 AS bigint)
            FROM entity_events WHERE function = $1 AND entity_id = $2 AND seq > $3::bigint
            ORDER BY seq LIMIT $4::bigint
            """, [key.function, key.entity, String(seq), String(limit)])
        return result.rows.map { row in Self.event(key, row[0], row[1], row[2], row[3]) }
    }

    /// What is new for each of `cursors` (entity, last seq sent), up to `limit` per entity: one statement.
    func events(after cursors: [(EntityKey, Int64)], limit: Int) async throws -> [StoredEvent] {
        guard !cursors.isEmpty else { return [] }
        let result = try await pool.read(
            """
            SELECT s.function, s.entity_id, e.seq, e.event::text, e.principal::text,
                CAST(extract(epoch FROM e.created_at) * 1000 AS bigint)
            FROM unnest($1::text[], $2::text[], $3::bigint[]) AS s(function, entity_id, after)
            JOIN LATERAL (
                SELECT seq, event, principal, created_at FROM entity_events
                WHERE function = s.function AND entity_id = s.entity_id AND seq > s.after
                ORDER BY seq LIMIT $4::bigint
            ) AS e ON true
            ORDER BY s.function, s.entity_id, e.seq
            """,
            [
                PostgresArray.text(cursors.map(\.0.function)), PostgresArray.text(cursors.map(\.0.entity)),
                PostgresArray.text(cursors.map { String($0.1) }), String(limit),
            ])
        return result.rows.compactMap { row in
            guard let function = row[0], let entity = row[1] else { return nil }
            return Self.event(EntityKey(function: function, entity: entity), row[2], row[3], row[4], row[5])
        }
    }

    private static func event(_ key: EntityKey, _ seq: String?, _ event: String?, _ principal: String?, _ at: String?)
        -> StoredEvent
    {
        // jsonb may hold what the JSON layer refuses (a row written before the number check, say): such an event is
        // shown as its text, rather than failing the page, or the feed of every subscriber.
        func parsed(_ text: String?) -> JSONValue {
            guard let text else { return .null }
            return (try? JSONValue.parse(text, limits: JSONLimits(maxBytes: .max, maxDepth: 256))) ?? .string(text)
        }
        return StoredEvent(
            key: key, seq: seq.flatMap { Int64($0) } ?? 0, event: parsed(event), principal: parsed(principal),
            atMs: at.flatMap { Int64($0) } ?? 0)
    }
}

/// The live feed: subscribers, and the loop that reads for them.
final class EventFeed: Sendable {
    private struct Subscriber {
        var key: EntityKey
        var lastSeq: Int64
        let stream: HTTPStream
        var lastWrite: ContinuousClock.Instant
    }
    private struct State {
        var subscribers: [Int: Subscriber] = [:]
        var nextID = 0
        var closed = false
    }

    /// Bytes a subscriber may have waiting before the feed holds back its next frames until it reads.
    static let watermark = 256 << 10

    private let configuration: EventFeedConfiguration
    private let store: EventStore
    private let logger: Logger
    private let state = Mutex(State())
    private let wakeups = WakeUp()

    init(configuration: EventFeedConfiguration, pool: PostgresPool, logger: Logger) {
        self.configuration = configuration
        self.store = EventStore(pool: pool)
        self.logger = logger
    }

    /// Events were committed (here, or NOTIFY said elsewhere): read at once.
    func wake() { wakeups.signal() }

    /// Live subscribers now, for metrics.
    var subscriberCount: Int { state.withLock { $0.subscribers.count } }

    /// A new subscriber that has seen everything up to `after`; nil when the replica has as many as it takes, or
    /// is draining. The backlog comes through the same loop as live events, so nothing falls between them.
    func subscribe(_ key: EntityKey, after: Int64) -> HTTPStream? {
        let stream = HTTPStream()
        let added = state.withLock { state -> Bool in
            guard !state.closed, state.subscribers.count < configuration.maxSubscribers else { return false }
            state.nextID += 1
            state.subscribers[state.nextID] = Subscriber(
                key: key, lastSeq: after, stream: stream, lastWrite: .now)
            return true
        }
        guard added else { return nil }
        // Sent at once, so that the client sees the response start before the first event.
        stream.write(Array(": statefn event stream\nretry: 1000\n\n".utf8))
        wake()
        return stream
    }

    /// Ends every stream (a draining replica: clients reconnect elsewhere with Last-Event-ID) and takes no more.
    func close() {
        let streams = state.withLock { state -> [HTTPStream] in
            state.closed = true
            defer { state.subscribers = [:] }
            return state.subscribers.values.map(\.stream)
        }
        for stream in streams { stream.finish() }
    }

    /// Reads and delivers until cancelled.
    func run() async {
        let clock = ContinuousClock()
        while !Task.isCancelled {
            await poll(clock)
            await wakeups.wait(upTo: configuration.pollInterval, clock: clock)
        }
    }

    private func poll(_ clock: ContinuousClock) async {
        // Per entity, the lowest seq any of its subscribers has: one cursor per entity, however many listen.
        let cursors = state.withLock { state -> [EntityKey: Int64] in
            state.subscribers = state.subscribers.filter { $0.value.stream.isOpen }
            var cursors: [EntityKey: Int64] = [:]
            for subscriber in state.subscribers.values {
                cursors[subscriber.key] = min(cursors[subscriber.key] ?? .max, subscriber.lastSeq)
            }
            return cursors
        }
        guard !cursors.isEmpty else { return }
        let events: [StoredEvent]
        do {
            events = try await store.events(after: cursors.map { ($0.key, $0.value) }, limit: 500)
        } catch {
            logger.warning("event feed read failed", metadata: ["error": "\(error)"])
            return
        }
        var byKey: [EntityKey: [StoredEvent]] = [:]
        for event in events { byKey[event.key, default: []].append(event) }
        let now = clock.now
        var behind = false
        state.withLock { state in
            for (id, var subscriber) in state.subscribers {
                var open = true
                var wrote = false
                // Frame by frame, up to a watermark: a backlog goes out over several polls, and the seq moves only
                // past what was queued.
                for event in byKey[subscriber.key] ?? [] where event.seq > subscriber.lastSeq {
                    if subscriber.stream.pendingBytes >= Self.watermark {
                        behind = true
                        break
                    }
                    guard subscriber.stream.write(event.frame) else {
                        open = false
                        break
                    }
                    subscriber.lastSeq = event.seq
                    wrote = true
                }
                if open, !wrote, now - subscriber.lastWrite >= configuration.heartbeat {
                    open = subscriber.stream.write(Array(": keep-alive\n\n".utf8))
                    wrote = true
                }
                if wrote { subscriber.lastWrite = now }
                state.subscribers[id] = open ? subscriber : nil
            }
        }
        // A full page for some entity, or a subscriber held back at the watermark: more is waiting.
        if behind || byKey.values.contains(where: { $0.count >= 500 }) { wake() }
    }
}
