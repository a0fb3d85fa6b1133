// `statefn serve`: start the database (or connect to it), apply migrations, load functions, serve HTTP, and stop
// cleanly on SIGTERM or Ctrl-C. The flags and STATEFN_* variables become one ServeConfiguration; what runs is a
// ServiceGroup (Services.swift), stopped in the order written there.
import ArgumentParser
import Logging
import Metrics
import Prometheus
import ServiceLifecycle
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

            GET /metrics (Prometheus), /openapi.yaml, /healthz and /readyz need no credentials.

            Every option can also come from the STATEFN_* variable named beside it (a flag wins), and the \
            database from DATABASE_URL (postgres://user:pass@host:port/db?sslmode=…, or a libpq key=value string, \
            passed to libpq unchanged). A value that does not parse is refused, never replaced by the default.

            Examples:
              statefn serve --dev-key
              STATEFN_LISTEN=0.0.0.0:8080 \\
              DATABASE_URL='postgresql://root@db:26257/statefn?sslmode=disable' \\
                statefn serve --oidc-issuer https://id.example.com/realms/shop \\
                --jwt-audience statefn --db-pool-size 8
            """)

    @Option(
        help: ArgumentHelp(
            "Address to listen on, HOST:PORT; port 0 picks a free one (env STATEFN_LISTEN; default 127.0.0.1:8080).",
            valueName: "host:port"))
    var listen: String?

    @Option(help: ArgumentHelp("Directory of function executables (env STATEFN_FUNCTIONS; default functions).", valueName: "dir"))
    var functions: String?

    @Option(
        help: ArgumentHelp(
            "A request's head (request line and headers) must arrive whole within this long of the connection"
                + " opening or the previous request ending, or the connection is closed; 0 turns it off"
                + " (env STATEFN_HEADER_TIMEOUT; default 30s).", valueName: "duration"))
    var headerTimeout: String?

    @Option(
        help: ArgumentHelp(
            "At most this many connections from one client address at a time; 0 for no limit, as behind a proxy whose"
                + " connections all come from one address (env STATEFN_MAX_CONNECTIONS_PER_ADDRESS; default 256).",
            valueName: "count"))
    var maxConnectionsPerAddress: String?

    @Option(
        help: ArgumentHelp(
            "As root, run workers as this unprivileged account, created on first start if missing; as any other"
                + " user workers run as that user (env STATEFN_WORKER_USER; default statefn-worker).",
            valueName: "name"))
    var workerUser: String?

    @OptionGroup var database: DatabaseOptions

    @OptionGroup(title: "Authentication") var auth: AuthOptions

    @Option(
        help: ArgumentHelp(
            "Largest request body accepted; larger gets 413 (env STATEFN_MAX_BODY_BYTES; default 1048576).",
            valueName: "bytes"))
    var maxBodyBytes: String?

    @Option(help: ArgumentHelp("HTTP threads (env STATEFN_HTTP_THREADS; default 4).", valueName: "n"))
    var httpThreads: String?

    @Option(
        help: ArgumentHelp(
            "How long to finish requests in flight on shutdown, seconds or a duration like 30s (env"
                + " STATEFN_GRACE_PERIOD; default 10).", valueName: "seconds"))
    var gracePeriod: String?

    @Option(
        help: ArgumentHelp(
            "How long a command may keep losing version races (reloading and running again, with jittered backoff)"
                + " before 409 (env STATEFN_CONFLICT_BUDGET; default 2s).", valueName: "duration"))
    var conflictBudget: String?

    @Option(
        help: ArgumentHelp(
            "Memory for cached entity states; 0 turns the cache off (env STATEFN_CACHE_BYTES; default 67108864).",
            valueName: "bytes"))
    var cacheBytes: String?

    @Option(
        help: ArgumentHelp(
            "How many group commits (the state changes of many entities in one statement) may be on their way to"
                + " the database at once (env STATEFN_COMMIT_LANES; default 1: the largest groups).", valueName: "n"))
    var commitLanes: String?

    @Option(
        help: ArgumentHelp(
            "How long an Idempotency-Key's answer is kept for replay (env STATEFN_IDEMPOTENCY_TTL; default 24h).",
            valueName: "duration"))
    var idempotencyTtl: String?

    @Option(
        help: ArgumentHelp(
            "How long a repeat waits for the first request under its Idempotency-Key, still running here, before 409"
                + " with Retry-After (env STATEFN_IDEMPOTENCY_WAIT; default 10s).", valueName: "duration"))
    var idempotencyWait: String?

    @Option(
        help: ArgumentHelp(
            "How often each replica looks for due effects and timers when nothing woke it; NOTIFY (PostgreSQL) and"
                + " local commits wake it sooner (env STATEFN_OUTBOX_POLL; default 250ms).", valueName: "duration"))
    var outboxPoll: String?

    @Option(
        help: ArgumentHelp(
            "Runs of a failing effect (5xx, timeout) before it is dead-lettered; a 4xx dead-letters at once"
                + " (env STATEFN_OUTBOX_MAX_ATTEMPTS; default 20).", valueName: "n"))
    var outboxMaxAttempts: String?

    @Option(
        help: ArgumentHelp(
            "How long a replica's claim on an effect holds; a replica that dies mid-run leaves its effects to the"
                + " others after this. Keep it above the slowest function's timeout (env STATEFN_OUTBOX_LEASE;"
                + " default 60s).", valueName: "duration"))
    var outboxLease: String?

    @Option(
        help: ArgumentHelp(
            "How often the live event feed reads new events for its subscribers (env STATEFN_FEED_POLL; default"
                + " 200ms).", valueName: "duration"))
    var feedPoll: String?

    @Option(
        help: ArgumentHelp(
            "Live event-stream subscribers per replica; one more gets 503 with Retry-After"
                + " (env STATEFN_MAX_SUBSCRIBERS; default 1000).", valueName: "n"))
    var maxSubscribers: String?

    @Option(
        help: ArgumentHelp(
            "A comment line to an event stream that had nothing to send for this long (env STATEFN_SSE_HEARTBEAT;"
                + " default 15s).", valueName: "duration"))
    var sseHeartbeat: String?

    @Flag(
        help: ArgumentHelp(
            "Neither LISTEN nor NOTIFY: the dispatcher and the event feed find new work by polling alone, as they do"
                + " on CockroachDB (env STATEFN_POLL_ONLY=1)."))
    var pollOnly = false

    @Option(
        help: ArgumentHelp(
            "trace, debug, info, notice, warning, error or critical (env STATEFN_LOG_LEVEL; default info).",
            valueName: "level"))
    var logLevel: String?

    @Option(
        help: ArgumentHelp(
            "json (one object per line), text (for people) or auto: text on a terminal, json otherwise"
                + " (env STATEFN_LOG_FORMAT; default auto).", valueName: "format"))
    var logFormat: String?

    /// The flags given, by name, for the configuration to read beside the environment.
    private var flags: [String: String?] {
        var flags: [String: String?] = [
            "listen": listen, "functions": functions, "worker-user": workerUser, "header-timeout": headerTimeout,
            "max-connections-per-address": maxConnectionsPerAddress, "max-body-bytes": maxBodyBytes, "http-threads": httpThreads,
            "grace-period": gracePeriod, "conflict-budget": conflictBudget, "cache-bytes": cacheBytes, "commit-lanes": commitLanes,
            "idempotency-ttl": idempotencyTtl, "idempotency-wait": idempotencyWait, "outbox-poll": outboxPoll,
            "outbox-max-attempts": outboxMaxAttempts, "outbox-lease": outboxLease, "feed-poll": feedPoll,
            "max-subscribers": maxSubscribers, "sse-heartbeat": sseHeartbeat, "poll-only": pollOnly ? "1" : nil,
            "log-level": logLevel, "log-format": logFormat,
        ]
        flags.merge(database.flags) { $1 }
        flags.merge(auth.flags) { $1 }
        return flags
    }

    func configuration() throws -> ServeConfiguration {
        try configuring { try ServeConfiguration(configurationSource(flags)) }
    }

    func validate() throws { _ = try configuration() }

    func run() async throws {
        let configuration = try configuration()
        let logger = bootstrapLogging(level: configuration.logLevel, format: configuration.logFormat)
        try await reportingFailure(logger) { try await serve(configuration, logger) }
    }

    private func serve(_ configuration: ServeConfiguration, _ logger: Logger) async throws {
        // Before any secret is read: no worker may read this process's environment or memory.
        if !WorkerSandbox.becomeUndumpable() { logger.warning("cannot make the gateway undumpable (prctl failed)") }
        let signals = ShutdownSignals()
        let registry = bootstrapMetrics()

        let (config, embedded) = try configuration.database.open(logger: logger)
        defer { embedded?.stop() }
        let pool = PostgresPool(config: config, size: configuration.database.poolSize, logger: logger)
        defer { pool.close() }
        try await configuration.database.migrator().apply(on: pool, logger: logger)
        let authenticator = try await configuration.auth.authenticator(pool: pool, logger: logger)
        if authenticator != nil, configuration.auth.devKey {
            let (token, path) = try await DevKey.ensure(
                store: APIKeyStore(pool: pool), dataDirectory: absolutePath(configuration.database.dataDirectory))
            // Straight to fd 1, unbuffered, so it shows at once even when stdout is a pipe.
            let line = "development API key (admin:*): \(token)\n  kept in \(path); use it as:"
                + " curl -H \"Authorization: Bearer $(cat \(path))\" …\n"
            _ = Array(line.utf8).withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
            logger.info("development API key ready", metadata: ["file": "\(path)"])
        }

        let functionsDirectory = absolutePath(configuration.functionsDirectory)
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

        let sandbox = try workerSandbox(
            user: configuration.workerUser, explicitUser: configuration.workerUserGiven,
            functionsDirectory: functionsDirectory, dataDirectory: absolutePath(configuration.database.dataDirectory),
            clusterOwner: embedded.map { _ in configuration.database.clusterDirectory }, logger: logger)
        let workers = WorkerPool(logger: logger, sandbox: sandbox)
        var gatewayConfiguration = GatewayConfiguration()
        gatewayConfiguration.commits = configuration.commits
        gatewayConfiguration.outbox = configuration.outbox
        gatewayConfiguration.feed = configuration.feed
        // CockroachDB has no LISTEN/NOTIFY: there the dispatcher and the feed poll alone.
        let serverVersion = try await pool.execute("SELECT version()").rows.first?[0] ?? ""
        gatewayConfiguration.notify = !configuration.pollOnly && !serverVersion.contains("CockroachDB")
        if !gatewayConfiguration.notify {
            logger.info("no LISTEN/NOTIFY: the dispatcher and the event feed poll alone")
        }
        gatewayConfiguration.metricsExposition = { registry.emitToBuffer() }
        if let path = installedPath("docs/openapi.yaml", isDirectory: false) {
            gatewayConfiguration.openAPIDocument = readFile(path).map { Array($0.utf8) }
        } else {
            logger.warning("no docs/openapi.yaml found beside the binary; GET /openapi.yaml answers 404")
        }
        let gateway = Gateway(
            configuration: gatewayConfiguration, catalog: catalog, workers: workers, pool: pool,
            authenticator: authenticator, logger: logger)
        let server = HTTPServer(
            configuration: HTTPServerConfiguration(
                host: configuration.listen.host, port: configuration.listen.port, threads: configuration.httpThreads,
                maxBodyBytes: configuration.maxBodyBytes,
                headerTimeoutSeconds: Int(configuration.headerTimeout.components.seconds)
                    + (configuration.headerTimeout.components.attoseconds > 0 ? 1 : 0),
                maxConnectionsPerAddress: configuration.maxConnectionsPerAddress),
            logger: logger, executor: workers.answerExecutor, handler: { await gateway.handle($0) })
        do {
            try server.start()
        } catch {
            await workers.shutdown()
            throw error
        }
        logger.info("statefn listening", metadata: ["url": "http://\(configuration.listen.urlHost):\(server.port)"])

        let listener =
            gatewayConfiguration.notify
            ? PostgresListener(
                config: config, channels: ["statefn_outbox", "statefn_events"], logger: logger,
                onNotify: { gateway.notified($0) })
            : nil
        let services = GatewayServices(
            gateway: gateway, server: server, workers: workers, listener: listener,
            functionsDirectory: functionsDirectory, initialCatalog: catalog,
            idempotencySweep: min(configuration.commits.idempotencyTTL / 2, .seconds(60)),
            gracePeriod: configuration.gracePeriod, logger: logger)
        try await services.run(signals: signals)
        logger.info("stopped")
    }

    /// swift-metrics into a Prometheus registry, with latency buckets from 100 µs: a warm command takes well under
    /// the 5 ms the default buckets start at.
    private func bootstrapMetrics() -> PrometheusCollectorRegistry {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [
            .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .microseconds(2500),
            .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
            .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10),
            .seconds(30),
        ]
        MetricsSystem.bootstrap(factory)
        return registry
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
    } catch let error as ExitCode {
        throw error
    } catch {
        logger.critical("statefn failed", metadata: ["error": "\(error)"])
        throw ExitCode.failure
    }
}

/// Logs to stderr: JSON lines, or readable text (by default when stderr is a terminal).
func bootstrapLogging(level: Logger.Level, format: LogFormat? = nil) -> Logger {
    let format = format ?? StatefnLogHandler.defaultFormat
    LoggingSystem.bootstrap { label in
        var handler = StatefnLogHandler(label: label, format: format)
        handler.logLevel = level
        return handler
    }
    return Logger(label: "statefn")
}
