// The request path (DESIGN.md section 1): route, load state, run the worker, commit with compare-and-set, reply.
// One `Gateway` serves every request; the HTTP server calls `handle` for each.
import Logging
import StatefnAuth
import StatefnHTTP
import StatefnJSON
import StatefnPostgres
import StatefnWorkers
import Synchronization

public struct GatewayConfiguration: Sendable {
    /// The conflict budget, the state cache and idempotency: see `CommitterConfiguration`.
    public var commits = CommitterConfiguration()
    public var outbox = OutboxConfiguration()
    public var feed = EventFeedConfiguration()
    /// Whether commits with effects or events send NOTIFY (PostgreSQL; not CockroachDB).
    public var notify = false
    /// The metrics backend's exposition, served at `/metrics` after the scrape-time gauges are set; nil: 404.
    public var metricsExposition: (@Sendable () -> [UInt8])?
    /// The OpenAPI document served at `/openapi.yaml`; nil: 404.
    public var openAPIDocument: [UInt8]?
    public init() {}
}

public final class Gateway: Sendable {
    private let configuration: GatewayConfiguration
    private let catalog: Mutex<FunctionCatalog>
    private let workers: WorkerPool
    private let pool: PostgresPool
    private let store: EntityStore
    private let committer: Committer
    private let dispatcher: OutboxDispatcher
    private let outbox: OutboxStore
    private let feed: EventFeed
    private let events: EventStore
    private let expiry: ExpiryStore
    private let logger: Logger
    private let metrics: RequestMetrics
    private let gauges = ScrapeGauges()
    private let draining = Atomic<Bool>(false)
    /// nil only with `--insecure-no-auth`: every call is then anonymous and allowed.
    private let authenticator: Authenticator?

    public init(
        configuration: GatewayConfiguration, catalog: FunctionCatalog, workers: WorkerPool, pool: PostgresPool,
        authenticator: Authenticator?, logger: Logger
    ) {
        self.authenticator = authenticator
        self.configuration = configuration
        self.catalog = Mutex(catalog)
        self.workers = workers
        self.pool = pool
        self.store = EntityStore(
            pool: pool, logger: logger, notifies: configuration.notify, commitLanes: configuration.commits.commitLanes)
        let dispatcher = OutboxDispatcher(configuration: configuration.outbox, pool: pool, logger: logger)
        let feed = EventFeed(configuration: configuration.feed, pool: pool, logger: logger)
        self.dispatcher = dispatcher
        self.feed = feed
        self.outbox = OutboxStore(pool: pool)
        self.events = EventStore(pool: pool)
        self.expiry = ExpiryStore(pool: pool)
        let metrics = RequestMetrics()
        self.metrics = metrics
        self.committer = Committer(
            configuration: configuration.commits, store: store, logger: logger, metrics: metrics,
            onEffects: { dispatcher.wake(afterMs: $0) }, onEvents: { feed.wake() })
        self.logger = logger
    }

    /// A NOTIFY arrived (another replica committed effects or events).
    public func notified(_ channel: String) {
        switch channel {
        case "statefn_outbox": dispatcher.wake()
        case "statefn_events": feed.wake()
        default: break
        }
    }

    /// The outbox dispatcher, until cancelled: it claims due effects and timers and runs each as a command.
    public func runDispatcher() async {
        await dispatcher.run { [self] row in await runEffect(row) }
    }

    /// The live event feed, until cancelled.
    public func runEventFeed() async { await feed.run() }

    /// Ends every live event stream (clients reconnect elsewhere with Last-Event-ID) and takes no new ones.
    public func closeEventStreams() { feed.close() }

    /// Expires entities and events past their functions' `state_ttl_ms` and `events_ttl_ms`, every `interval`, in
    /// batches of 500, until cancelled.
    public func sweepExpired(every interval: Duration) async {
        while !Task.isCancelled {
            await expiry.sweep(catalog.withLock { $0.functions.mapValues(\.manifest) }, logger: logger)
            try? await Task.sleep(for: interval)
        }
    }

    /// Swaps in a rescanned functions directory (hot reload): new requests see the new functions at once.
    public func replaceCatalog(_ catalog: FunctionCatalog) {
        self.catalog.withLock { $0 = catalog }
    }

    /// From now on readiness answers 503, so a load balancer stops sending traffic, and the dispatcher claims no
    /// more effects.
    public func beginDraining() {
        draining.store(true, ordering: .relaxed)
        dispatcher.stop()
    }

    /// Shutdown past its grace: nothing commits from now on, and this returns once the commits under way have
    /// finished. Requests still running after this are answered 503, and none of them will have committed.
    public func closeCommits() async { await committer.closeCommits() }

    /// Deletes expired idempotency records in small batches, every `interval`, until cancelled. Every replica may
    /// run it: the batches are small, and two sweepers only share the work.
    public func sweepIdempotencyRecords(every interval: Duration) async {
        await committer.sweepExpiredRecords(every: interval)
    }

    public func handle(_ request: HTTPRequest) async -> HTTPResponse {
        await handle(request, context: RequestContext()).response
    }

    /// Runs one outbox row as the command (or action) it names, as its source's principal, with the row's id as
    /// its Idempotency-Key, through the same path as a client's request.
    func runEffect(_ row: OutboxRow) async -> EffectOutcome {
        guard let sourceManifest = catalog.withLock({ $0.functions[row.sourceFunction]?.manifest }) else {
            // Its scopes are its source's: a source that is gone for a moment (a reload) is waited for, and one
            // that is gone for good runs out of attempts.
            return .retry("503: the effect's source function \(row.sourceFunction) is not loaded")
        }
        let scopes = sourceManifest.effectScopes.isEmpty ? ["invoke:\(row.sourceFunction)"] : sourceManifest.effectScopes
        var context = RequestContext()
        context.effectPrincipal = Principal(subject: "fn:\(row.sourceFunction)/\(row.sourceEntity)", scopes: scopes)
        // The route is known, and its names were checked when the row was committed: no path to encode and parse.
        context.route =
            if let entity = row.entity {
                .command(function: row.function, entity: entity, command: row.command, readonly: false)
            } else {
                .action(function: row.function, command: row.command)
            }
        let request = HTTPRequest(
            method: "POST", path: "/v1/\(row.function)/" + (row.entity.map { $0 + "/" } ?? "") + row.command, query: [],
            headers: HTTPHeaders([("content-type", "application/json"), ("idempotency-key", row.id)]),
            body: Array(row.payload.utf8), requestID: "effect-\(row.id)-\(row.attempts)")
        let (response, failure) = await handle(request, context: context)
        response.afterSending?()
        guard !(200..<300).contains(response.status) else { return .done }
        // A refusal is final, whatever its status: the function's own answer (stored under the key, so a re-run
        // would only replay it), or a replay of one.
        let replayed = response.headers.contains { $0.name == "Idempotent-Replayed" }
        let detail =
            failure?.detail
            ?? (try? JSONValue.parse(response.body, limits: JSONLimits(maxBytes: .max, maxDepth: 64)))?["detail"]?
            .stringValue ?? ""
        return EffectOutcome(
            status: response.status, detail: detail, refusal: failure?.isBusinessError == true || replayed)
    }

    /// The response, and the error it answers, if it is one.
    private func handle(_ request: HTTPRequest, context: RequestContext) async
        -> (response: HTTPResponse, failure: GatewayError?)
    {
        let started = ContinuousClock.now
        var context = context
        var response: HTTPResponse
        var failure: GatewayError?
        do {
            response = try await route(request, &context)
        } catch {
            let error = GatewayError.from(error)
            context.logDetail = error.logDetail
            failure = error
            response = error.response(requestID: request.requestID)
        }
        // From here to the server's hand-off there is no suspension point, so a shutdown that waits for leases
        // never answers 503 in place of this response.
        committer.release(context.lease)
        let elapsed = ContinuousClock.now - started
        let replayed = response.headers.contains { $0.name == "Idempotent-Replayed" }
        // Logged and counted once the response is on its way, so that neither delays it.
        response.afterSending = { [self, context, status = response.status] in
            log(request, status: status, context, elapsed: elapsed)
            let function = context.functionLabel
            metrics.request(function: function, context.operation, status: status, elapsed: elapsed)
            if replayed { metrics.replay(function: function) }
        }
        return (response, failure)
    }

    private func route(_ request: HTTPRequest, _ context: inout RequestContext) async throws -> HTTPResponse {
        switch try context.route ?? Route.parse(method: request.method, path: request.path) {
        case .healthz:
            context.operation = .health
            return .json(["status": "ok"])
        case .readyz:
            context.operation = .health
            return await readiness()
        case .metrics:
            context.operation = .metrics
            return await metricsPage()
        case .openAPI:
            context.operation = .openapi
            guard let document = configuration.openAPIDocument else {
                throw GatewayError(404, "this build has no OpenAPI document installed")
            }
            return HTTPResponse(status: 200, headers: [(name: "Content-Type", value: "application/yaml")], body: document)
        case .functions:
            context.operation = .functions
            _ = try await authorize(request, &context, .admin, function: nil, entity: nil, isPublic: false)
            return await listFunctions()
        case .outbox:
            context.operation = .outbox
            _ = try await authorize(request, &context, .admin, function: nil, entity: nil, isPublic: false)
            return try await listOutbox(request)
        case .outboxRetry(let id):
            context.operation = .outbox
            _ = try await authorize(request, &context, .admin, function: nil, entity: nil, isPublic: false)
            guard OutboxStore.isUUID(id) else { throw GatewayError(400, "an outbox id is a UUID") }
            switch try await outbox.revive(id) {
            case .pending:
                dispatcher.wake()
                return .json(["id": .string(id), "state": "pending"])
            case .alreadyDone:
                return .json(["id": .string(id), "state": "done"])
            case .notDead:
                throw try await outbox.exists(id)
                    ? GatewayError(409, "outbox row \(id) is not dead-lettered; it is pending already")
                    : GatewayError(404, "no outbox row \(id)")
            }
        case .list(let function):
            context.operation = .list
            context.function = function
            _ = try await lookup(function, stateless: false, request, &context, .read, entity: nil)
            _ = try await authorize(request, &context, .read, function: function, entity: nil, isPublic: false)
            return try await listEntities(function, request)
        case .delete(let function, let entity):
            context.operation = .delete
            context.function = function
            context.entity = entity
            let definition = try await lookup(function, stateless: false, request, &context, .admin, entity: entity)
            let principal = try await authorize(
                request, &context, .admin, function: function, entity: entity, isPublic: false)
            return try await deleteEntity(
                definition, entity: entity, request: request, principal: principal, lease: context.lease)
        case .events(let function, let entity):
            context.operation = .events
            context.function = function
            context.entity = entity
            _ = try await lookup(function, stateless: false, request, &context, .read, entity: entity)
            _ = try await authorize(request, &context, .read, function: function, entity: entity, isPublic: false)
            return try await eventLog(EntityKey(function: function, entity: entity), request)
        case .command(let function, let entity, let command, let readonly):
            context.operation = readonly ? .query : .command
            context.function = function
            context.entity = entity
            context.command = command
            let definition = try await lookup(function, stateless: false, request, &context, .invoke, entity: entity)
            let principal = try await authorize(
                request, &context, .invoke, function: function, entity: entity,
                isPublic: definition.manifest.publicCommands.contains(command))
            if readonly {
                return try await runQuery(
                    definition, entity: entity, command: command, request: request, principal: principal)
            }
            return try await runCommand(
                definition, entity: entity, command: command, request: request, principal: principal,
                lease: context.lease)
        case .action(let function, let command):
            context.operation = .action
            context.function = function
            context.command = command
            let definition = try await lookup(function, stateless: true, request, &context, .invoke, entity: nil)
            let principal = try await authorize(
                request, &context, .invoke, function: function, entity: nil,
                isPublic: definition.manifest.publicCommands.contains(command))
            let payload = try Self.parseBody(request)
            let answer = try await invoke(
                definition, entity: nil, command: command, payload: payload, snapshot: .absent, readonly: true,
                requestID: request.requestID, principal: principal)
            guard !answer.changesAnything else {
                throw GatewayError(500, "the action tried to change state; nothing was committed")
            }
            return .json(answer.reply)
        case .rawState(let function, let entity):
            context.operation = .state
            context.function = function
            context.entity = entity
            _ = try await lookup(function, stateless: false, request, &context, .read, entity: entity)
            _ = try await authorize(request, &context, .read, function: function, entity: entity, isPublic: false)
            let snapshot = try await store.load(EntityKey(function: function, entity: entity))
            guard snapshot.exists else {
                throw GatewayError(404, "entity \(entity) has no state: it was never written, or it was deleted")
            }
            let etag = Self.etag(snapshot.version)
            if let tags = request.headers["if-none-match"], Self.matches(tags, version: snapshot.version) {
                return HTTPResponse(status: 304, headers: [etag])
            }
            return .json(["state": snapshot.state, "version": .integer(snapshot.version)], headers: [etag])
        }
    }

    /// `lookup`, but a caller who could not make the call anyway (401 without valid credentials, 403 without the
    /// scope) hears that rather than whether the function exists: which functions exist is not for strangers. The
    /// manifest is needed first for the rest (its `public_commands`), so this checks credentials only on a miss.
    private func lookup(
        _ name: String, stateless: Bool, _ request: HTTPRequest, _ context: inout RequestContext, _ action: ScopeAction,
        entity: String?
    ) async throws -> FunctionDefinition {
        do {
            return try lookup(name, stateless: stateless, &context)
        } catch {
            _ = try await authorize(request, &context, action, function: name, entity: entity, isPublic: false)
            throw error
        }
    }

    private func lookup(
        _ name: String, stateless: Bool, _ context: inout RequestContext
    ) throws(GatewayError) -> FunctionDefinition {
        let (definition, failure) = catalog.withLock { ($0.functions[name], $0.failures[name]) }
        guard let definition else {
            if failure != nil {
                context.knownFunction = true  // a name in the directory: bounded
                throw GatewayError(
                    503, "function \(name) failed to load", logDetail: failure,
                    headers: [(name: "Retry-After", value: "5")])
            }
            throw GatewayError(404, "unknown function \(name)")
        }
        context.knownFunction = true
        if definition.manifest.stateless != stateless {
            throw stateless
                ? GatewayError(404, "function \(name) is not an action; call /v1/\(name)/{entity}/{command}")
                : GatewayError(404, "function \(name) is an action; call POST /v1/\(name)/{command}")
        }
        return definition
    }

    // MARK: Authentication

    /// Who is calling, decided before any state is read or any worker runs: 401 for missing or bad credentials
    /// (a bad credential is refused even on a public command), 429 over the caller's rate limit, 403 without a
    /// scope for the call. nil for an anonymous call to a public command, or when authentication is off.
    private func authorize(
        _ request: HTTPRequest, _ context: inout RequestContext, _ action: ScopeAction, function: String?,
        entity: String?, isPublic: Bool
    ) async throws -> Principal? {
        if let principal = context.effectPrincipal {
            // An effect: its source function's scopes decide, with authentication on or off.
            context.subject = principal.subject
            if !isPublic { try Authenticator.authorize(principal, action, function: function, entity: entity) }
            return principal
        }
        guard let authenticator else { return nil }
        guard
            let principal = try await authenticator.authenticate(
                authorization: request.headers["authorization"], from: request.clientAddress)
        else {
            if isPublic { return nil }
            throw AuthError(.missing, "credentials are required: Authorization: Bearer <API key or JWT>")
        }
        guard !principal.subject.utf8.starts(with: "fn:".utf8) else {
            // `fn:<function>/<entity>` is how a function's effects are known; no credential may pass as one.
            throw AuthError(.invalidClaims, "subjects starting with fn: are reserved for functions' effects")
        }
        context.subject = principal.subject
        try authenticator.admit(principal)
        if !isPublic { try Authenticator.authorize(principal, action, function: function, entity: entity) }
        return principal
    }

    // MARK: Commands and queries

    private func runCommand(
        _ definition: FunctionDefinition, entity: String, command: String, request: HTTPRequest,
        principal: Principal?, lease: CommitLease
    ) async throws -> HTTPResponse {
        let payload = try Self.parseBody(request)
        let ifMatch = request.headers["if-match"]
        let key = EntityKey(function: definition.name, entity: entity)
        let claim = try IdempotencyClaim.parse(header: request.headers["idempotency-key"]).map { token in
            IdempotencyClaim(
                caller: principal?.subject ?? "", key: key, token: token,
                fingerprint: IdempotencyClaim.fingerprint(command: command, ifMatch: ifMatch, body: request.body))
        }
        let input = CommandInput(
            key: key, manifest: definition.manifest, expectedVersion: try Self.ifMatch(request), claim: claim,
            principal: principal?.json.encodedString() ?? "null", requestID: request.requestID, lease: lease)
        return try await committer.execute(input) { snapshot in
            try await self.invoke(
                definition, entity: entity, command: command, payload: payload, snapshot: snapshot,
                readonly: false, requestID: request.requestID, principal: principal)
        }
    }

    private func runQuery(
        _ definition: FunctionDefinition, entity: String, command: String, request: HTTPRequest,
        principal: Principal?
    ) async throws -> HTTPResponse {
        var payload = JSONObject()
        for (name, value) in request.query { payload[name] = .string(value) }
        let expected = try Self.ifMatch(request)
        let snapshot = try await store.load(EntityKey(function: definition.name, entity: entity))
        if let expected, expected != snapshot.version {
            throw GatewayError(412, "the entity is at version \(snapshot.version), not \(expected)")
        }
        let answer = try await invoke(
            definition, entity: entity, command: command, payload: .object(payload), snapshot: snapshot,
            readonly: true, requestID: request.requestID, principal: principal)
        let unchangedState: Bool
        switch answer.change {
        case .unchanged: unchangedState = true
        case .replace(let state): unchangedState = state == snapshot.state
        case .delete: unchangedState = false
        }
        guard unchangedState, answer.events.isEmpty, answer.effects.isEmpty else {
            throw GatewayError(500, "the query tried to change state; nothing was committed")
        }
        return .json(answer.reply, headers: [Self.etag(snapshot.version)])
    }

    private func invoke(
        _ definition: FunctionDefinition, entity: String?, command: String, payload: JSONValue,
        snapshot: EntitySnapshot, readonly: Bool, requestID: String, principal: Principal?
    ) async throws -> WorkerAnswer {
        let message: JSONValue = [
            "id": .string(requestID),
            "function": .string(definition.name),
            "entity": entity.map(JSONValue.string) ?? .null,
            "command": .string(command),
            "payload": payload,
            "state": snapshot.state,
            "version": .integer(snapshot.version),
            "readonly": .bool(readonly),
            "principal": principal?.json ?? .null,
            "deadline_ms": .integer(Int64(definition.manifest.timeoutMs)),
        ]
        let started = ContinuousClock.now
        defer { metrics.worker(function: definition.name, elapsed: ContinuousClock.now - started) }
        return try WorkerAnswer(try await workers.invoke(definition, request: message))
    }

    // MARK: Request details

    /// The JSON body; empty means `null`. A declared media type other than JSON is 415.
    private static func parseBody(_ request: HTTPRequest) throws -> JSONValue {
        guard !request.body.isEmpty else { return .null }
        if let contentType = request.headers["content-type"] {
            let media = contentType.split(separator: ";", maxSplits: 1).first?.trimmingSpaces.lowercased() ?? ""
            guard media == "application/json" || (media.hasPrefix("application/") && media.hasSuffix("+json")) else {
                throw GatewayError(415, "the body must be application/json, not \(media)")
            }
        }
        return try JSONValue.parse(request.body, limits: JSONLimits(maxBytes: .max, maxDepth: 64))
    }

    /// `If-Match: "<version>"`; `*` matches anything.
    private static func ifMatch(_ request: HTTPRequest) throws(GatewayError) -> Int64? {
        guard let header = request.headers["if-match"]?.trimmingSpaces, header != "*" else { return nil }
        guard let version = taggedVersion(Substring(header)) else {
            throw GatewayError(400, "If-Match must be a quoted version, like \"3\"")
        }
        return version
    }

    /// Whether an `If-None-Match` list (`"3"`, `W/"3"`, `"1", "3"` or `*`) names `version`.
    private static func matches(_ header: String, version: Int64) -> Bool {
        header.split(separator: ",").contains { item in
            let tag = Substring(item.trimmingSpaces)
            return tag == "*" || taggedVersion(tag) == version
        }
    }

    /// The version an entity tag names: `"3"` or `W/"3"` (quotes optional); nil for anything else.
    private static func taggedVersion(_ tag: Substring) -> Int64? {
        var text = tag
        if text.hasPrefix("W/") { text = text.dropFirst(2) }
        if text.hasPrefix("\""), text.hasSuffix("\""), text.count >= 2 { text = text.dropFirst().dropLast() }
        guard let version = Int64(text), version >= 0 else { return nil }
        return version
    }

    private static func etag(_ version: Int64) -> (name: String, value: String) {
        (name: "ETag", value: "\"\(version)\"")
    }

    // MARK: Deletes, lists, the event log and the outbox

    /// `DELETE /v1/{function}/{entity}`: a commit like a command's (If-Match, the cache rule, Idempotency-Key),
    /// whose answer is the delete. The event log stays.
    private func deleteEntity(
        _ definition: FunctionDefinition, entity: String, request: HTTPRequest, principal: Principal?,
        lease: CommitLease
    ) async throws -> HTTPResponse {
        let key = EntityKey(function: definition.name, entity: entity)
        let ifMatch = request.headers["if-match"]
        let claim = try IdempotencyClaim.parse(header: request.headers["idempotency-key"]).map { token in
            IdempotencyClaim(
                caller: principal?.subject ?? "", key: key, token: token,
                fingerprint: IdempotencyClaim.fingerprint(command: "DELETE", ifMatch: ifMatch, body: []))
        }
        let input = CommandInput(
            key: key, manifest: definition.manifest, expectedVersion: try Self.ifMatch(request), claim: claim,
            principal: principal?.json.encodedString() ?? "null", requestID: request.requestID, lease: lease)
        return try await committer.execute(input) { snapshot in
            guard snapshot.exists else {
                throw WorkerAnswer.refusal(404, "entity \(entity) has no state: it was never written, or it was deleted")
            }
            return try WorkerAnswer(["reply": ["deleted": true, "version": .integer(snapshot.version + 1)], "delete": true])
        }
    }

    /// `GET /v1/{function}?prefix=&after=&limit=`.
    private func listEntities(_ function: String, _ request: HTTPRequest) async throws -> HTTPResponse {
        let limit = try Self.limit(request.queryValue("limit"), default: 100)
        let (prefix, after) = (request.queryValue("prefix") ?? "", request.queryValue("after") ?? "")
        // Entity ids never hold a NUL (nor can PostgreSQL's text): such a bound matches nothing, and is a mistake.
        guard !prefix.utf8.contains(0), !after.utf8.contains(0) else {
            throw GatewayError(400, "prefix and after must not contain a NUL byte")
        }
        let rows = try await store.list(function, prefix: prefix, after: after, limit: limit)
        let entities: [JSONValue] = rows.map { row in
            [
                "id": .string(row[0] ?? ""), "version": .integer(row[1].flatMap { Int64($0) } ?? 0),
                "updated_at": .string(Timestamp.rfc3339(ms: row[2].flatMap { Int64($0) } ?? 0)),
            ]
        }
        let next: JSONValue = rows.count == limit ? .string(rows.last?[0] ?? "") : .null
        return .json(["entities": .array(entities), "next": next])
    }

    /// `GET /v1/{function}/{entity}/events`: a page, or with `Accept: text/event-stream` the live feed.
    private func eventLog(_ key: EntityKey, _ request: HTTPRequest) async throws -> HTTPResponse {
        var after: Int64 = 0
        if let text = request.headers["last-event-id"]?.trimmingSpaces ?? request.queryValue("after") {
            guard let value = Int64(text), value >= 0 else {
                throw GatewayError(400, "after (or Last-Event-ID) must be a non-negative event seq")
            }
            after = value
        }
        let wantsStream = request.headers["accept"]?.split(separator: ",").contains {
            $0.split(separator: ";").first?.trimmingSpaces.lowercased() == "text/event-stream"
        } ?? false
        if wantsStream {
            guard let stream = feed.subscribe(key, after: after) else {
                throw GatewayError(
                    503, "this replica has as many live event subscribers as it takes; try again, or another replica",
                    headers: [(name: "Retry-After", value: "5")])
            }
            var response = HTTPResponse(
                status: 200,
                headers: [
                    (name: "Content-Type", value: "text/event-stream"), (name: "Cache-Control", value: "no-cache"),
                    (name: "X-Accel-Buffering", value: "no"),
                ])
            response.stream = stream
            return response
        }
        let limit = try Self.limit(request.queryValue("limit"), default: 100)
        let page = try await events.events(of: key, after: after, limit: limit)
        return .json(["events": .array(page.map(\.json)), "last_seq": .integer(page.last?.seq ?? after)])
    }

    /// `GET /v1/outbox?state=pending|dead&limit=`.
    private func listOutbox(_ request: HTTPRequest) async throws -> HTTPResponse {
        let dead: Bool
        switch request.queryValue("state") ?? "pending" {
        case "pending": dead = false
        case "dead": dead = true
        default: throw GatewayError(400, "state must be pending or dead")
        }
        let rows = try await outbox.list(dead: dead, limit: try Self.limit(request.queryValue("limit"), default: 100))
        let effects: [JSONValue] = rows.map { row in
            [
                "id": .string(row[0] ?? ""), "function": .string(row[1] ?? ""),
                "entity": row[2].map(JSONValue.string) ?? .null, "command": .string(row[3] ?? ""),
                "attempts": .integer(row[4].flatMap { Int64($0) } ?? 0),
                "last_error": row[5].map(JSONValue.string) ?? .null,
                "not_before": .string(Timestamp.rfc3339(ms: row[6].flatMap { Int64($0) } ?? 0)),
                "source_function": .string(row[7] ?? ""), "source_entity": .string(row[8] ?? ""),
            ]
        }
        return .json(["effects": .array(effects)])
    }

    /// `limit`: 1 to 1000, `fallback` when absent.
    private static func limit(_ text: String?, default fallback: Int) throws(GatewayError) -> Int {
        guard let text else { return fallback }
        guard let value = Int(text), (1...1000).contains(value) else {
            throw GatewayError(400, "limit must be a whole number from 1 to 1000")
        }
        return value
    }

    // MARK: Listing, readiness and logs

    /// `GET /v1/functions`: each function with its manifest and its pools' live state (an old generation that is
    /// still draining included), then the functions that failed to load, with the reason.
    private func listFunctions() async -> HTTPResponse {
        let catalog = self.catalog.withLock { $0 }
        let pools = await workers.status()
        var functions: [JSONValue] = []
        for definition in catalog.functions.values.sorted(by: { $0.name < $1.name }) {
            let mine = pools.filter { $0.function == definition.name }
            var workerList: [JSONValue] = []
            for pool in mine {
                for worker in pool.workers {
                    workerList.append([
                        "pid": .integer(Int64(worker.pid)), "state": .string(worker.state),
                        "requests_served": .integer(Int64(worker.requestsServed)),
                        "rss_bytes": .integer(Int64(worker.residentBytes)),
                        "generation": pool.revision == definition.revision && !pool.draining ? "current" : "draining",
                    ])
                }
            }
            let unhealthy = mine.compactMap(\.unhealthyForMs).max()
            func total(_ count: (WorkerPoolStatus) -> Int) -> JSONValue {
                .integer(Int64(mine.map(count).reduce(0, +)))
            }
            functions.append([
                "name": .string(definition.name), "mode": .string(definition.manifest.mode.rawValue),
                "executable": .string(definition.executable), "manifest": definition.manifest.json,
                "healthy": .bool(unhealthy == nil),
                "retry_after_s": unhealthy.map { .integer(Int64(($0 + 999) / 1000)) } ?? .null,
                "queue_depth": total(\.queued), "busy": total(\.busy), "idle": total(\.idle),
                "workers": .array(workerList),
                "cold_starts": total(\.coldStarts), "crashes": total(\.crashes), "timeouts": total(\.timeouts),
                "recycles": total(\.recycles),
            ])
        }
        let failed: [JSONValue] = catalog.failures.sorted(by: { $0.key < $1.key }).map {
            ["name": .string($0.key), "reason": .string($0.value)]
        }
        return .json(["functions": .array(functions), "failed": .array(failed)])
    }

    /// Prometheus's text format: the scrape-time gauges set first, then the backend's exposition.
    private func metricsPage() async -> HTTPResponse {
        guard let exposition = configuration.metricsExposition else {
            return GatewayError(404, "metrics are off in this gateway").response(requestID: "")
        }
        let known = catalog.withLock { Array($0.functions.keys) }
        let depth: OutboxStore.Depth?
        do {
            depth = try await gauges.outboxDepth { try await outbox.depth() }
        } catch {
            logger.warning("metrics: the outbox depth could not be read", metadata: ["error": "\(error)"])
            depth = nil
        }
        gauges.record(
            pools: await workers.status(), known: known, database: pool.usage, subscribers: feed.subscriberCount,
            outbox: depth)
        return HTTPResponse(
            status: 200, headers: [(name: "Content-Type", value: "text/plain; version=0.0.4; charset=utf-8")],
            body: exposition())
    }

    private func readiness() async -> HTTPResponse {
        guard !draining.load(ordering: .relaxed) else {
            return .json(["status": "draining"], status: 503, headers: [(name: "Retry-After", value: "5")])
        }
        do {
            _ = try await pool.execute("SELECT 1 FROM schema_migrations LIMIT 1")
        } catch {
            return .json(["status": "database unavailable"], status: 503, headers: [(name: "Retry-After", value: "1")])
        }
        let (loaded, failed) = catalog.withLock { ($0.functions.count, $0.failures.count) }
        return .json([
            "status": "ready", "functions": .integer(Int64(loaded)), "failed_functions": .integer(Int64(failed)),
        ])
    }

    private func log(_ request: HTTPRequest, status: Int, _ context: RequestContext, elapsed: Duration) {
        var metadata: Logger.Metadata = [
            "request_id": "\(request.requestID)", "method": "\(request.method)", "path": "\(request.path)",
            "status": "\(status)",
            "duration_ms": "\(elapsed.milliseconds)",
        ]
        if let function = context.function { metadata["function"] = "\(function)" }
        if let entity = context.entity { metadata["entity"] = "\(entity)" }
        if let command = context.command { metadata["command"] = "\(command)" }
        if let subject = context.subject { metadata["sub"] = "\(subject)" }
        if let detail = context.logDetail { metadata["error"] = "\(detail)" }
        let level: Logger.Level = status >= 500 ? .error : (status >= 400 ? .notice : .info)
        logger.log(level: level, "request", metadata: metadata)
    }
}

struct RequestContext {
    let lease = CommitLease()
    /// Set for an outbox row's run: the source function's principal, in place of the request's credentials, and
    /// the route, in place of parsing the path.
    var effectPrincipal: Principal?
    var route: Route?
    var function: String?
    var entity: String?
    var command: String?
    var subject: String?
    var logDetail: String?
    /// The metrics' labels: what kind of call this was, and whether `function` names a loaded function (a name a
    /// client made up is counted as "unknown", so that it cannot grow the label set).
    var operation: Operation = .other
    var knownFunction = false

    /// `-` for a call to no function, the name of a loaded one, else `unknown`.
    var functionLabel: String {
        guard let function else { return "-" }
        return knownFunction ? function : "unknown"
    }
}

extension StringProtocol {
    var trimmingSpaces: String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else {
            return ""
        }
        return String(self[first...last])
    }
}

extension Duration {
    /// Milliseconds with microsecond precision, for logs.
    var milliseconds: Double {
        Double(components.seconds) * 1000 + Double(components.attoseconds / 1_000_000_000_000) / 1000
    }
}
