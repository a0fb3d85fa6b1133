// What `statefn serve` runs, as services under one swift-service-lifecycle ServiceGroup. SIGTERM or SIGINT starts a
// graceful shutdown, and the group stops the services one at a time, in the reverse of the order they are listed
// in `run()`, each finishing before the next is told. So the stop order is written once, there:
//
//   1. drain       readiness answers 503; live event streams end (clients resume elsewhere with Last-Event-ID);
//                  the dispatcher claims nothing more
//   2. http        no new connections; requests in flight, and effects under way, finish within the grace; past
//                  it, nothing more commits and what still runs is answered 503
//   3. dispatcher  waits for the effects it started (they have finished or been refused by now)
//   4. feed, sweepers, listener, reload watcher: stop
//   5. workers     stdin closed, SIGTERM, a short grace, SIGKILL; reaped
import Dispatch
import Logging
import ServiceLifecycle
import StatefnCore
import StatefnHTTP
import StatefnPostgres
import StatefnWorkers
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

struct GatewayServices {
    var gateway: Gateway
    var server: HTTPServer
    var workers: WorkerPool
    var listener: PostgresListener?
    var functionsDirectory: String
    var initialCatalog: FunctionCatalog
    var idempotencySweep: Duration
    var gracePeriod: Duration
    var logger: Logger

    func run(signals: ShutdownSignals) async throws {
        let gateway = self.gateway
        let logger = self.logger
        // Listed in start order; stopped from the last to the first.
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: WorkerPoolService(workers: workers), serviceName: "workers"),
            .init(
                service: ReloadWatcher(
                    workers: workers, gateway: gateway, directory: functionsDirectory, initial: initialCatalog,
                    logger: logger),
                serviceName: "reload-watcher"),
        ]
        if let listener { services.append(.init(service: ListenerService(listener: listener), serviceName: "listener")) }
        services += [
            .init(
                service: BackgroundTask { [idempotencySweep] in
                    await withDiscardingTaskGroup { group in
                        group.addTask { await gateway.sweepIdempotencyRecords(every: idempotencySweep) }
                        group.addTask { await gateway.sweepExpired(every: .seconds(1)) }
                    }
                },
                serviceName: "sweepers"),
            .init(service: BackgroundTask { await gateway.runEventFeed() }, serviceName: "event-feed"),
            .init(service: Dispatcher(gateway: gateway), serviceName: "dispatcher"),
            .init(service: HTTPService(server: server, gateway: gateway, gracePeriod: gracePeriod), serviceName: "http"),
            .init(service: Drain(gateway: gateway, gracePeriod: gracePeriod, logger: logger), serviceName: "drain"),
        ]
        // The signals are caught from serve's first line (ShutdownSignals), not from here: one that came during
        // start-up shuts the group down as soon as it runs.
        var configuration = ServiceGroupConfiguration(services: services, logger: logger)
        configuration.logging.keys.serviceKey = "service"
        let group = ServiceGroup(configuration: configuration)
        signals.onSignal { Task { await group.triggerGracefulShutdown() } }
        try await group.run()
    }
}

/// SIGTERM and SIGINT, caught from the first moment of `serve`: their default action (exit at once) is off, so a
/// signal during start-up (the embedded cluster starting, migrations, the first JWKS fetch) is kept and answered
/// with the graceful stop once the services run, and the embedded cluster is never left behind. A second signal
/// changes nothing: the stop under way is bounded by the grace period.
final class ShutdownSignals: Sendable {
    private final class Handler: Sendable {
        let state = Mutex<(signalled: Bool, action: (@Sendable () -> Void)?)>((false, nil))
    }
    private let handler = Handler()
    // Kept alive for as long as the process listens; only read at init.
    nonisolated(unsafe) private let sources: [any DispatchSourceSignal]

    init() {
        signal(SIGPIPE, SIG_IGN)  // a worker that exits mid-write must not kill the gateway
        let handler = self.handler
        sources = [SIGTERM, SIGINT].map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler {
                let action = handler.state.withLock { state -> (@Sendable () -> Void)? in
                    defer { state.signalled = true }
                    return state.signalled ? nil : state.action
                }
                action?()
            }
            source.resume()
            return source
        }
    }

    /// Calls `action` on the first signal, or now if it already came.
    func onSignal(_ action: @escaping @Sendable () -> Void) {
        let already = handler.state.withLock { state in
            state.action = action
            return state.signalled
        }
        if already { action() }
    }
}

/// Waits for the shutdown, then begins it: readiness 503, event streams closed, no more claims from the outbox.
private struct Drain: Service {
    var gateway: Gateway
    var gracePeriod: Duration
    var logger: Logger

    func run() async throws {
        try await gracefulShutdown()
        gateway.beginDraining()
        gateway.closeEventStreams()
        // Logged once readiness says draining, so whoever reads this line sees the 503 from then on.
        logger.info("shutting down", metadata: ["grace_period_s": "\(gracePeriod.components.seconds)"])
    }
}

/// The HTTP server, started before the group (its port is logged first); on shutdown it stops accepting and
/// finishes what is in flight within the grace.
private struct HTTPService: Service {
    var server: HTTPServer
    var gateway: Gateway
    var gracePeriod: Duration

    func run() async throws {
        try? await gracefulShutdown()
        server.quiesce()
        // Past the grace, requests still running are answered 503: first make sure none of them commits after.
        await server.stop(gracePeriod: gracePeriod) { await gateway.closeCommits() }
    }
}

/// The outbox dispatcher: it stops claiming when draining begins, and its turn to stop comes once the effects it
/// started are done and the HTTP server has stopped.
private struct Dispatcher: Service {
    var gateway: Gateway

    func run() async throws {
        await gateway.runDispatcher()
        try? await gracefulShutdown()
    }
}

/// Work that runs until the shutdown reaches it, then is cancelled.
private struct BackgroundTask: Service {
    var body: @Sendable () async -> Void

    func run() async throws { await cancelWhenGracefulShutdown { await body() } }
}

/// LISTEN for other replicas' commits, on a connection of its own.
private struct ListenerService: Service {
    var listener: PostgresListener

    func run() async throws {
        listener.start()
        try? await gracefulShutdown()
        await listener.stop()
    }
}

/// Rescans the functions directory (hot reload) until the shutdown.
private struct ReloadWatcher: Service {
    var workers: WorkerPool
    var gateway: Gateway
    var directory: String
    var initial: FunctionCatalog
    var logger: Logger

    func run() async throws {
        let (gateway, logger) = (self.gateway, self.logger)
        workers.watchFunctions(directory: directory, initial: initial) { [previous = Mutex(initial)] next in
            let before = previous.withLock { old in
                defer { old = next }
                return old
            }
            logCatalogChange(from: before, to: next, logger: logger)
            gateway.replaceCatalog(next)
        }
        try? await gracefulShutdown()
        workers.stopWatching()
    }
}

/// The worker pool, stopped last: every worker is told to exit, and reaped.
private struct WorkerPoolService: Service {
    var workers: WorkerPool

    func run() async throws {
        try? await gracefulShutdown()
        await workers.shutdown()
    }
}
