// LISTEN on a connection of its own, on a thread of its own: PostgreSQL's NOTIFY as a wake-up for the outbox
// dispatcher and the event feed. Only ever a wake-up: polling is the path that must work alone (CockroachDB has no
// LISTEN), so a listener that cannot connect, or a database that refuses LISTEN, only costs latency.
import Foundation
import Logging
import Synchronization

public final class PostgresListener: Sendable {
    private let config: PostgresConfig
    private let channels: [String]
    private let logger: Logger
    private let onNotify: @Sendable (String) -> Void
    private let stopped = Atomic<Bool>(false)
    private let exited = Mutex<[CheckedContinuation<Void, Never>]?>([])

    /// `channels` must be plain identifiers. `onNotify` runs on the listener's thread with the channel's name.
    public init(
        config: PostgresConfig, channels: [String], logger: Logger, onNotify: @escaping @Sendable (String) -> Void
    ) {
        self.config = config
        self.channels = channels
        self.logger = logger
        self.onNotify = onNotify
    }

    /// Starts the thread. It reconnects after a lost connection, and gives up for good only when the database
    /// refuses LISTEN (CockroachDB), saying so once.
    public func start() {
        let thread = Thread { [self] in
            run()
            let waiting = exited.withLock { list -> [CheckedContinuation<Void, Never>] in
                defer { list = nil }
                return list ?? []
            }
            for continuation in waiting { continuation.resume() }
        }
        thread.name = "statefn.listen"
        thread.start()
    }

    /// Stops the thread within one wait (at most 250 ms) and returns once it has ended.
    public func stop() async {
        stopped.store(true, ordering: .relaxed)
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let pending = exited.withLock { list -> Bool in
                guard list != nil else { return false }
                list!.append(continuation)
                return true
            }
            if !pending { continuation.resume() }
        }
    }

    private func run() {
        var warned = false
        while !stopped.load(ordering: .relaxed) {
            do {
                let connection = try PostgresConnection(config: config)
                defer { connection.close() }
                for channel in channels {
                    do {
                        _ = try connection.execute("LISTEN \(channel)")
                    } catch let error where error.code == .queryFailed {
                        logger.info(
                            "the database does not take LISTEN; the dispatcher and the event feed poll alone",
                            metadata: ["error": "\(error.logDescription)"])
                        return
                    }
                }
                if warned { logger.info("listening for database notifications again") }
                warned = false
                // A wake-up after (re)connecting: anything notified while the listener was away is picked up.
                for channel in channels { onNotify(channel) }
                while !stopped.load(ordering: .relaxed) {
                    for channel in try connection.waitForNotifications(timeoutMs: 250) { onNotify(channel) }
                }
            } catch {
                if !warned {
                    logger.notice(
                        "the notification listener lost its connection; polling until it is back",
                        metadata: ["error": "\(error)"])
                    warned = true
                }
                for _ in 0..<10 where !stopped.load(ordering: .relaxed) { usleep(100_000) }
            }
        }
    }
}
