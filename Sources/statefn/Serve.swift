// `statefn serve`: start the database (or connect to it), apply migrations, load functions, serve HTTP, and stop
// cleanly on SIGTERM or Ctrl-C.
import ArgumentParser
import Logging
import StatefnAuth
import StatefnCore
import StatefnHTTP
import StatefnPostgres
import StatefnWorkers
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve the v1 HTTP API.",
        discussion: """
            Without DATABASE_URL, statefn runs a private PostgreSQL cluster under <data-dir>/pg, listening on a \
            Unix socket only, and stops it on exit. Pending migrations are applied at start-up. SIGTERM or Ctrl-C \
            stops accepting connections, finishes the requests in flight (up to --grace-period), stops the workers \
            and the embedded cluster, and exits 0.

            Every call needs Authorization: Bearer <API key or JWT>, except commands a function's manifest lists \
            as public. API keys come from `statefn keys create` (or --dev-key); JWTs are checked against \
            --jwks-file, --jwks-url or --oidc-issuer. --insecure-no-auth turns this off, on loopback only.

            Effects and timers a command commits run from the outbox, in every replica (--outbox-*); the event \
            log streams as server-sent events (--feed-poll, --max-subscribers, --sse-heartbeat). On PostgreSQL \
            NOTIFY wakes the other replicas; --poll-only makes them poll alone, as on CockroachDB.

            Environment: DATABASE_URL (postgres://user:pass@host:port/db or a libpq key=value string), and the \
            STATEFN_* variable named beside each option.
            """)

    @Option(help: ArgumentHelp("Address to listen on, HOST:PORT; port 0 picks a free one (env STATEFN_LISTEN).", valueName: "host:port"))
    var listen: String = Environment.value("STATEFN_LISTEN") ?? "127.0.0.1:8080"

    @Option(help: ArgumentHelp("Directory of function executables (env STATEFN_FUNCTIONS).", valueName: "dir"))
    var functions: String = Environment.value("STATEFN_FUNCTIONS") ?? "functions"

    @OptionGroup var database: DatabaseOptions

    @OptionGroup(title: "Authentication") var auth: AuthOptions

    @Option(help: ArgumentHelp("Largest request body accepted; larger gets 413 (env STATEFN_MAX_BODY_BYTES).", valueName: "bytes"))
    var maxBodyBytes: Int = Environment.value("STATEFN_MAX_BODY_BYTES").flatMap { Int($0) } ?? 1 << 20

    @Option(help: ArgumentHelp("HTTP threads (env STATEFN_HTTP_THREADS).", valueName: "n"))
    var httpThreads: Int = Environment.value("STATEFN_HTTP_THREADS").flatMap { Int($0) } ?? 4

    @Option(help: ArgumentHelp("Seconds to finish requests in flight on shutdown (env STATEFN_GRACE_PERIOD).", valueName: "seconds"))
    var gracePeriod: Int = Environment.value("STATEFN_GRACE_PERIOD").flatMap { Int($0) } ?? 10

    @Option(
        help: ArgumentHelp(
            "How long a command may keep losing version races (reloading and running again, with jittered backoff)"
                + " before 409, like 2s or 500ms (env STATEFN_CONFLICT_BUDGET).", valueName: "duration"))
    var conflictBudget: String = Environment.value("STATEFN_CONFLICT_BUDGET") ?? "2s"

    @Option(
        help: ArgumentHelp(
            "Memory for cached entity states; 0 turns the cache off (env STATEFN_CACHE_BYTES).", valueName: "bytes"))
    var cacheBytes: String = Environment.value("STATEFN_CACHE_BYTES") ?? String(64 << 20)

    @Option(
        help: ArgumentHelp(
            "How long an Idempotency-Key's answer is kept for replay, like 24h (env STATEFN_IDEMPOTENCY_TTL).",
            valueName: "duration"))
    var idempotencyTtl: String = Environment.value("STATEFN_IDEMPOTENCY_TTL") ?? "24h"

    @Option(
        help: ArgumentHelp(
            "How long a repeat waits for the first request under its Idempotency-Key, still running here, before 409"
                + " with Retry-After (env STATEFN_IDEMPOTENCY_WAIT).", valueName: "duration"))
    var idempotencyWait: String = Environment.value("STATEFN_IDEMPOTENCY_WAIT") ?? "10s"

    @Option(
        help: ArgumentHelp(
            "How often each replica looks for due effects and timers when nothing woke it; NOTIFY (PostgreSQL) and"
                + " local commits wake it sooner (env STATEFN_OUTBOX_POLL).", valueName: "duration"))
    var outboxPoll: String = Environment.value("STATEFN_OUTBOX_POLL") ?? "250ms"

    @Option(
        help: ArgumentHelp(
            "Runs of a failing effect (5xx, timeout) before it is dead-lettered; a 4xx dead-letters at once"
                + " (env STATEFN_OUTBOX_MAX_ATTEMPTS).", valueName: "n"))
    var outboxMaxAttempts: String = Environment.value("STATEFN_OUTBOX_MAX_ATTEMPTS") ?? "20"

    @Option(
        help: ArgumentHelp(
            "How long a replica's claim on an effect holds; a replica that dies mid-run leaves its effects to the"
                + " others after this. Keep it above the slowest function's timeout (env STATEFN_OUTBOX_LEASE).",
            valueName: "duration"))
    var outboxLease: String = Environment.value("STATEFN_OUTBOX_LEASE") ?? "60s"

    @Option(
        help: ArgumentHelp(
            "How often the live event feed reads new events for its subscribers (env STATEFN_FEED_POLL).",
            valueName: "duration"))
    var feedPoll: String = Environment.value("STATEFN_FEED_POLL") ?? "200ms"

    @Option(
        help: ArgumentHelp(
            "Live event-stream subscribers per replica; one more gets 503 with Retry-After"
                + " (env STATEFN_MAX_SUBSCRIBERS).", valueName: "n"))
    var maxSubscribers: String = Environment.value("STATEFN_MAX_SUBSCRIBERS") ?? "1000"

    @Option(
        help: ArgumentHelp(
            "A comment line to an event stream that had nothing to send for this long (env STATEFN_SSE_HEARTBEAT).",
            valueName: "duration"))
    var sseHeartbeat: String = Environment.value("STATEFN_SSE_HEARTBEAT") ?? "15s"

    @Flag(
        help: ArgumentHelp(
            "Neither LISTEN nor NOTIFY: the dispatcher and the event feed find new work by polling alone, as they do"
                + " on CockroachDB (env STATEFN_POLL_ONLY=1)."))
    var pollOnly: Bool = Environment.value("STATEFN_POLL_ONLY") == "1"

    @Option(help: ArgumentHelp("trace, debug, info, notice, warning, error or critical (env STATEFN_LOG_LEVEL).", valueName: "level"))
    var logLevel: String = Environment.value("STATEFN_LOG_LEVEL") ?? "info"

    func validate() throws {
        let address = try ListenAddress(listen)
        try auth.validate(listenHost: address.host)
        guard maxBodyBytes > 0 else { throw ValidationError("--max-body-bytes must be positive") }
        guard (1...256).contains(httpThreads) else { throw ValidationError("--http-threads must be 1 to 256") }
        guard (1...1000).contains(database.dbPoolSize) else { throw ValidationError("--db-pool-size must be 1 to 1000") }
        guard gracePeriod >= 0 else { throw ValidationError("--grace-period must not be negative") }
        let commits = try commitConfiguration()
        let (outbox, _) = try backgroundConfiguration()
        // An effect whose row outlives its claim (its dispatcher died after the commit) runs again once the lease
        // ends, and must find its answer under its key then.
        guard commits.idempotencyTTL > outbox.lease else {
            throw ValidationError(
                "--idempotency-ttl (\(idempotencyTtl)) must be longer than --outbox-lease (\(outboxLease)): an effect"
                    + " re-run after its lease must still find its stored answer")
        }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown --log-level \(logLevel)") }
    }

    func run() async throws {
        let logger = bootstrapLogging(level: Logger.Level(rawValue: logLevel) ?? .info)
        try await reportingFailure(logger) { try await serve(logger) }
    }

    private func serve(_ logger: Logger) async throws {
        let address = try ListenAddress(listen)
        let signals = ShutdownSignals()

        let (config, embedded) = try database.open(logger: logger)
        defer { embedded?.stop() }
        let pool = PostgresPool(config: config, size: database.dbPoolSize, logger: logger)
        defer { pool.close() }
        try await database.migrator().apply(on: pool, logger: logger)
        let authenticator = try await auth.authenticator(pool: pool, logger: logger)
        if authenticator != nil, auth.wantsDevKey {
            let (token, path) = try await DevKey.ensure(
                store: APIKeyStore(pool: pool), dataDirectory: absolutePath(database.dataDir))
            // Straight to fd 1, unbuffered, so it shows at once even when stdout is a pipe.
            let line = "development API key (admin:*): \(token)\n  kept in \(path); use it as:"
                + " curl -H \"Authorization: Bearer $(cat \(path))\" …\n"
            _ = Array(line.utf8).withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
            logger.info("development API key ready", metadata: ["file": "\(path)"])
        }

        let functionsDirectory = absolutePath(functions)
        guard isDirectory(functionsDirectory) else {
            throw ValidationError("functions directory not found: \(functionsDirectory)")
        }
        let catalog = FunctionCatalog.scan(directory: functionsDirectory)
        for (name, reason) in catalog.failures.sorted(by: { $0.key < $1.key }) {
            logger.error("function failed to load", metadata: ["function": "\(name)", "reason": "\(reason)"])
        }
        logger.info(
            "functions loaded",
            metadata: ["directory": "\(functionsDirectory)", "functions": "\(catalog.functions.keys.sorted().joined(separator: ","))"])

        let workers = WorkerPool(logger: logger)
        var gatewayConfiguration = GatewayConfiguration()
        gatewayConfiguration.commits = try commitConfiguration()
        (gatewayConfiguration.outbox, gatewayConfiguration.feed) = try backgroundConfiguration()
        // CockroachDB has no LISTEN/NOTIFY: there the dispatcher and the feed poll alone.
        let serverVersion = try await pool.execute("SELECT version()").rows.first?[0] ?? ""
        gatewayConfiguration.notify = !pollOnly && !serverVersion.contains("CockroachDB")
        if !gatewayConfiguration.notify {
            logger.info("no LISTEN/NOTIFY: the dispatcher and the event feed poll alone")
        }
        let gateway = Gateway(
            configuration: gatewayConfiguration, catalog: catalog, workers: workers, pool: pool,
            authenticator: authenticator, logger: logger)
        workers.watchFunctions(directory: functionsDirectory, initial: catalog) { [previous = Mutex(catalog)] next in
            let before = previous.withLock { old in
                defer { old = next }
                return old
            }
            logCatalogChange(from: before, to: next, logger: logger)
            gateway.replaceCatalog(next)
        }
        let server = HTTPServer(
            configuration: HTTPServerConfiguration(
                host: address.host, port: address.port, threads: httpThreads, maxBodyBytes: maxBodyBytes),
            logger: logger, executor: workers.answerExecutor, handler: { await gateway.handle($0) })
        do {
            try server.start()
        } catch {
            await workers.shutdown()
            throw error
        }
        logger.info("statefn listening", metadata: ["url": "http://\(address.urlHost):\(server.port)"])

        let ttl = gatewayConfiguration.commits.idempotencyTTL
        let sweeper = Task { await gateway.sweepIdempotencyRecords(every: min(ttl / 2, .seconds(60))) }
        let expirySweeper = Task { await gateway.sweepExpired(every: .seconds(1)) }
        let dispatcher = Task { await gateway.runDispatcher() }
        let feed = Task { await gateway.runEventFeed() }
        let listener = gatewayConfiguration.notify
            ? PostgresListener(
                config: config, channels: ["statefn_outbox", "statefn_events"], logger: logger,
                onNotify: { gateway.notified($0) })
            : nil
        listener?.start()

        let signal = await signals.wait()
        logger.info("shutting down", metadata: ["signal": "\(signal)", "grace_period_s": "\(gracePeriod)"])
        // The stop order: readiness says draining; live event streams end (their clients resume elsewhere with
        // Last-Event-ID); the dispatcher claims nothing more; requests and the effects under way finish within
        // the grace; then the sweepers, the listener and the workers stop.
        gateway.beginDraining()
        gateway.closeEventStreams()
        dispatcher.cancel()
        server.quiesce()
        // Past the grace, requests still running are answered 503: first make sure none of them commits after.
        await server.stop(gracePeriod: .seconds(gracePeriod)) { await gateway.closeCommits() }
        await dispatcher.value
        feed.cancel()
        sweeper.cancel()
        expirySweeper.cancel()
        await listener?.stop()
        await workers.shutdown()
        logger.info("stopped")
    }

    /// The dispatcher's and the event feed's settings, from their flags.
    private func backgroundConfiguration() throws -> (OutboxConfiguration, EventFeedConfiguration) {
        var outbox = OutboxConfiguration()
        outbox.pollInterval = try duration(outboxPoll, "--outbox-poll", from: (.milliseconds(10), "10ms"), to: (.seconds(60), "60s"))
        outbox.maxAttempts = try count(outboxMaxAttempts, "--outbox-max-attempts", in: 1...1000)
        outbox.lease = try duration(outboxLease, "--outbox-lease", from: (.seconds(1), "1s"), to: (.seconds(86400), "24h"))
        var feed = EventFeedConfiguration()
        feed.pollInterval = try duration(feedPoll, "--feed-poll", from: (.milliseconds(10), "10ms"), to: (.seconds(60), "60s"))
        feed.maxSubscribers = try count(maxSubscribers, "--max-subscribers", in: 0...100_000)
        feed.heartbeat = try duration(sseHeartbeat, "--sse-heartbeat", from: (.seconds(1), "1s"), to: (.seconds(3600), "1h"))
        return (outbox, feed)
    }

    /// A duration flag within bounds, each given with its spelling for the message.
    private func duration(
        _ text: String, _ flag: String, from low: (Duration, String), to high: (Duration, String)
    ) throws -> Duration {
        let value = try DurationText.parse(text, flag: flag)
        guard value >= low.0, value <= high.0 else {
            throw ValidationError("\(flag) must be from \(low.1) to \(high.1), got \(text)")
        }
        return value
    }

    private func count(_ text: String, _ flag: String, in range: ClosedRange<Int>) throws -> Int {
        guard let value = Int(text), range.contains(value) else {
            throw ValidationError(
                "\(flag) must be a whole number from \(range.lowerBound) to \(range.upperBound), got \(text)")
        }
        return value
    }

    /// The conflict budget, the cache and idempotency, from their flags; a malformed value is refused by name.
    private func commitConfiguration() throws -> CommitterConfiguration {
        var commits = CommitterConfiguration()
        commits.conflictBudget = try DurationText.parse(conflictBudget, flag: "--conflict-budget")
        guard commits.conflictBudget <= .seconds(600) else {
            throw ValidationError("--conflict-budget must be at most 10m, got \(conflictBudget)")
        }
        guard let bytes = Int(cacheBytes), bytes >= 0 else {
            throw ValidationError("--cache-bytes must be a whole number of bytes, got \(cacheBytes)")
        }
        commits.cacheBytes = bytes
        commits.idempotencyTTL = try DurationText.parse(idempotencyTtl, flag: "--idempotency-ttl")
        guard commits.idempotencyTTL >= .seconds(1) else {
            throw ValidationError("--idempotency-ttl must be at least 1s, got \(idempotencyTtl)")
        }
        commits.idempotencyWait = try DurationText.parse(idempotencyWait, flag: "--idempotency-wait")
        return commits
    }
}

/// One log line per function that appeared, changed, went away or failed in a rescan of the functions directory.
func logCatalogChange(from old: FunctionCatalog, to new: FunctionCatalog, logger: Logger) {
    for (name, definition) in new.functions.sorted(by: { $0.key < $1.key }) {
        if let before = old.functions[name] {
            if before != definition { logger.info("function changed; old workers drain", metadata: ["function": "\(name)"]) }
        } else {
            logger.info("function added", metadata: ["function": "\(name)"])
        }
    }
    for name in old.functions.keys.sorted() where new.functions[name] == nil && new.failures[name] == nil {
        logger.info("function removed", metadata: ["function": "\(name)"])
    }
    for (name, reason) in new.failures.sorted(by: { $0.key < $1.key }) where old.failures[name] != reason {
        logger.error("function failed to load", metadata: ["function": "\(name)", "reason": "\(reason)"])
    }
}

/// `HOST:PORT`, with `[v6]:PORT` for IPv6 literals.
struct ListenAddress {
    var host: String
    var port: Int

    init(_ text: String) throws {
        let hostPart: Substring
        let portPart: Substring
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            hostPart = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { throw ValidationError("--listen must be HOST:PORT, got \(text)") }
            portPart = rest.dropFirst()
        } else if let colon = text.lastIndex(of: ":") {
            hostPart = text[..<colon]
            portPart = text[text.index(after: colon)...]
        } else {
            throw ValidationError("--listen must be HOST:PORT, got \(text)")
        }
        guard !hostPart.isEmpty, let port = Int(portPart), (0...65535).contains(port) else {
            throw ValidationError("--listen must be HOST:PORT with a port from 0 to 65535, got \(text)")
        }
        host = String(hostPart)
        self.port = port
    }

    var urlHost: String { host.contains(":") ? "[\(host)]" : host }
}

/// Runs `body`; a failure is logged with its full detail (a database error's server message, say, which the
/// error's own description leaves out) and ends the process with status 1.
func reportingFailure(_ logger: Logger, _ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let error as PostgresError {
        logger.critical("statefn failed", metadata: ["error": "\(error.logDescription)"])
        throw ExitCode.failure
    } catch let error as ValidationError {
        throw error
    } catch {
        logger.critical("statefn failed", metadata: ["error": "\(error)"])
        throw ExitCode.failure
    }
}

func bootstrapLogging(level: Logger.Level) -> Logger {
    LoggingSystem.bootstrap { label in
        var handler = JSONLogHandler(label: label)
        handler.logLevel = level
        return handler
    }
    return Logger(label: "statefn")
}
