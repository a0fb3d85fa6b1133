// The one place that turns a command into a durable answer (DESIGN.md section 4): the entity's mailbox, the state
// cache policy, idempotency records, the compare-and-set, and the conflict loop with its time budget. `Gateway`
// routes and authorizes; it hands the Committer a command and a way to run the worker on a snapshot.
//
// The rules kept here:
// - Nothing is acknowledged on the strength of the cache. A command that ran on a cached snapshot either commits with
//   a compare-and-set, or, when it changes nothing, checks the version in the database before it answers.
// - A lost compare-and-set reloads and runs again, with jittered backoff, until the budget is spent; only then 409.
// - An answer under an Idempotency-Key is stored in its commit's own transaction; a repeat replays it.
// - After `closeCommits` (shutdown past its grace) nothing new commits, so a client answered 503 then never finds
//   its command committed.
import Logging
import StatefnHTTP
import StatefnJSON
import StatefnWorkers
import Synchronization

public struct CommitterConfiguration: Sendable {
    /// How long a command may keep losing compare-and-sets before it is answered 409.
    public var conflictBudget: Duration = .seconds(2)
    /// Entities whose last snapshot is kept in memory, and the bytes they may take.
    public var cacheEntries = 100_000
    public var cacheBytes = 64 << 20
    /// How long idempotency records are kept.
    public var idempotencyTTL: Duration = .seconds(24 * 3600)
    /// How long a repeat waits for the first call under its key, still running in this gateway, before a 409.
    public var idempotencyWait: Duration = .seconds(10)
    /// How many group commit statements may be on their way at once (GroupCommit.swift). One keeps the batches
    /// largest, and was fastest on a 2-core machine; a database with many cores, far away, may want more.
    public var commitLanes = 1
    public init() {}
}

/// A command for the Committer: which entity, under which conditions, and on whose behalf.
struct CommandInput: Sendable {
    var key: EntityKey
    var manifest: FunctionManifest
    /// `If-Match`: the version the entity must be at, checked against the database.
    var expectedVersion: Int64?
    var claim: IdempotencyClaim?
    /// The principal as JSON text, recorded with each event.
    var principal: String
    var requestID: String
    /// Held from the command's first commit until its response is handed to the server (see `closeCommits`).
    var lease: CommitLease
}

/// A request's hold on the commit gate. Taken when its first commit starts, given back by `Gateway.handle` once the
/// response is ready to hand to the server: only then can shutdown tell that client's answer apart from a 503.
final class CommitLease: Sendable {
    fileprivate let held = Atomic<Bool>(false)
    init() {}
}

final class Committer: Sendable {
    typealias Worker = @Sendable (EntitySnapshot) async throws -> WorkerAnswer

    private let configuration: CommitterConfiguration
    private let store: EntityStore
    private let cache: StateCache
    private let mailboxes = EntityMailboxes<Member, Result<HTTPResponse, any Error>>()
    private let inFlight = IdempotencyInFlight()
    private let gate = Mutex(CommitGate())
    private let logger: Logger
    /// Told after a commit that wrote effects (with the soonest delay) or events: the dispatcher and the event
    /// feed of this replica need not wait for their next poll.
    private let onEffects: @Sendable (Int64) -> Void
    private let onEvents: @Sendable () -> Void

    private let metrics: RequestMetrics
    /// How many batches have run, and how many commands they held (for tests and debugging).
    private let batchCounts = Mutex<(batches: Int, commands: Int)>((0, 0))
    var batchStatistics: (batches: Int, commands: Int) { batchCounts.withLock { $0 } }
    /// Commands waiting behind a running one, over all entities.
    var queuedCommands: Int { mailboxes.queuedCount }

    init(
        configuration: CommitterConfiguration, store: EntityStore, logger: Logger,
        metrics: RequestMetrics = RequestMetrics(),
        onEffects: @escaping @Sendable (Int64) -> Void = { _ in }, onEvents: @escaping @Sendable () -> Void = {}
    ) {
        self.configuration = configuration
        self.store = store
        self.onEffects = onEffects
        self.onEvents = onEvents
        self.cache = StateCache(capacity: configuration.cacheEntries, byteBudget: configuration.cacheBytes)
        self.logger = logger
        self.metrics = metrics
    }

    /// Runs `input`'s command through `worker` and commits what it returns; the response is the client's answer.
    func execute(_ input: CommandInput, worker: @escaping Worker) async throws -> HTTPResponse {
        let run = {
            try await self.mailboxes.run(
                input.key, Member(input: input, worker: worker), maxBatch: Self.maxBatch, joins: Self.joins
            ) { await self.commitLoop($0) }.get()
        }
        guard let claim = input.claim else { return try await run() }
        return try await inFlight.run(claim, wait: configuration.idempotencyWait, run)
    }

    /// Deletes expired idempotency records in small batches, every `interval`, until cancelled. Every replica may
    /// run it: the batches are small, and two sweepers only share the work.
    func sweepExpiredRecords(every interval: Duration) async {
        while !Task.isCancelled {
            do {
                _ = try await sweepInBatches { try await store.sweepExpiredRecords(limit: $0) }
            } catch {
                logger.warning("idempotency sweep failed", metadata: ["error": "\(error)"])
            }
            try? await Task.sleep(for: interval)
        }
    }

    /// From now on nothing commits (a command that gets here is answered 503, and nothing of it is written); waits
    /// for the requests whose commits are under way until their responses are ready, so that their clients get
    /// their real answers. There is no time limit: giving up would answer 503 to a command that then commits, and
    /// a commit ends on its own (pool waits, retries and read-backs are all bounded).
    func closeCommits() async {
        gate.withLock { $0.closed = true }
        let clock = ContinuousClock()
        var nextLog = clock.now.advanced(by: .seconds(5))
        while case let active = gate.withLock({ $0.active }), active > 0 {
            if clock.now >= nextLog {
                logger.warning("shutdown waits for commits under way", metadata: ["commits": "\(active)"])
                nextLog = clock.now.advanced(by: .seconds(5))
            }
            try? await Task.sleep(for: .milliseconds(2))
        }
    }

    /// Gives back `lease`'s hold on the commit gate, if it took one. Called once the response is ready.
    func release(_ lease: CommitLease) {
        guard lease.held.exchange(false, ordering: .acquiringAndReleasing) else { return }
        gate.withLock { $0.active -= 1 }
    }

    /// One command in a batch: its input, the way to run its worker, and its answer once it has one.
    private struct Member: Sendable {
        var input: CommandInput
        var worker: Worker
    }

    /// At most this many commands of one entity run in one batch (one after another) and commit together.
    private static let maxBatch = 64

    /// Whether a queued command may join a batch `leader` leads. Not with If-Match, which is checked against the
    /// database on a version of its own. And only commands alike in their Idempotency-Keys share one: when a
    /// commit's outcome is lost, a batch with keys is settled by its stored answers (all there, or none), and one
    /// without by the entity's version; a command without a key in a batch with keys would have neither, and
    /// could run twice.
    private static func joins(_ leader: Member, _ queued: Member) -> Bool {
        leader.input.expectedVersion == nil && queued.input.expectedVersion == nil
            && (leader.input.claim == nil) == (queued.input.claim == nil)
    }

    /// What one run of the batch decided for one member.
    private struct Decided {
        var index: Int
        var decision: Decision
    }

    /// Runs a batch of one entity's commands, each on the state the one before it left, and commits what they
    /// decided in one commit: the last state, every event, effect and idempotency record, and one version per
    /// command that changed the state. Each member is answered only once that commit has landed. A lost
    /// compare-and-set runs them all again on a fresh read, within the budget. A member that fails on its own (its
    /// worker crashed, its state is too big) gets its error, and the others go on as if it had not been sent.
    private func commitLoop(_ members: [Member]) async -> [Result<HTTPResponse, any Error>] {
        batchCounts.withLock {
            $0.batches += 1
            $0.commands += members.count
        }
        var answers = [Result<HTTPResponse, any Error>?](repeating: nil, count: members.count)
        let key = members[0].input.key
        let clock = ContinuousClock()
        var deadline = clock.now.advanced(by: configuration.conflictBudget)
        var attempt = 0
        var limit = members.count
        while true {
            attempt += 1
            do {
                // Answers already stored under a member's key are replayed (one query for the batch); those
                // members do not run.
                let keyed = members.indices.filter { answers[$0] == nil && members[$0].input.claim != nil }
                let stored = try await store.records(for: keyed.map { members[$0].input.claim! })
                for (index, record) in zip(keyed, stored) {
                    guard let record else { continue }
                    answers[index] =
                        record.fingerprint == members[index].input.claim!.fingerprint
                        ? .success(record.response())
                        : .failure(
                            GatewayError(
                                422,
                                "this Idempotency-Key was used for a different request; use a new key for a new request"
                            ))
                }
                // After a lost race, only the first half of what lost runs again: the fewer commands between the
                // read and the compare-and-set, the likelier it wins. The rest follow, in order, once it has.
                let running = Array(members.indices.filter { answers[$0] == nil }.prefix(limit))
                guard let first = running.first else { return answers.map { $0! } }

                // If-Match is checked against the database, and every run after the first reads afresh.
                let cached = attempt == 1 && members[first].input.expectedVersion == nil ? cache.get(key) : nil
                let snapshot: EntitySnapshot
                var snapshotBytes = 0
                if let cached {
                    snapshot = cached
                } else {
                    (snapshot, snapshotBytes) = try await store.loadMeasured(key)
                }
                if let expected = members[first].input.expectedVersion, expected != snapshot.version {
                    answers[first] = .failure(
                        GatewayError(412, "the entity is at version \(snapshot.version), not \(expected)"))
                    continue
                }

                // Each member runs on the state the one before it left.
                var current = snapshot
                var combined = CommitRequest(
                    key: key, seenVersion: snapshot.version, change: .unchanged, events: [], effects: [],
                    principal: "null")
                combined.steps = 0
                var decided: [Decided] = []
                for index in running {
                    let input = members[index].input
                    let decision: Decision
                    do {
                        decision = try await decide(input, snapshot: current, worker: members[index].worker)
                    } catch {
                        answers[index] = .failure(error)
                        continue
                    }
                    if let commit = decision.commit {
                        switch commit.change {
                        case .unchanged: break
                        case .replace, .delete:
                            combined.change = commit.change
                            combined.steps += 1
                            current = EntitySnapshot(state: decision.newState, version: commit.versionAfter)
                        }
                        combined.events += commit.events
                        combined.effects += commit.effects
                    }
                    if let claim = input.claim {
                        combined.records.append(
                            .init(
                                claim: claim, answer: decision.stored(claim.fingerprint),
                                ttlMs: Int64(configuration.idempotencyTTL.components.seconds) * 1000))
                    }
                    decided.append(Decided(index: index, decision: decision))
                }
                if case .unchanged = combined.change { combined.steps = 1 }
                guard !decided.isEmpty else { continue }  // every member failed alone: their errors are their answers

                let outcome: CommitOutcome
                if combined.isVersionCheck && cached == nil {
                    // Ran on state just read from the database, and changed nothing: the read is the answers' moment.
                    cache.put(key, snapshot, encodedBytes: snapshotBytes)
                    outcome = .committed(version: snapshot.version)
                } else {
                    outcome = try await commitThroughGate(
                        combined, leases: decided.map { members[$0.index].input.lease })
                }
                switch outcome {
                case .committed(let version):
                    if let soonest = combined.effects.map(\.delayMs).min() { onEffects(soonest) }
                    if !combined.events.isEmpty { onEvents() }
                    switch combined.change {
                    case .replace(let encoded):
                        cache.put(
                            key, EntitySnapshot(state: current.state, version: version),
                            encodedBytes: encoded.utf8.count)
                    case .delete: cache.put(key, EntitySnapshot(state: .null, version: version), encodedBytes: 4)
                    case .unchanged where cached == nil: cache.put(key, snapshot, encodedBytes: snapshotBytes)
                    case .unchanged: break
                    }
                    for member in decided { answers[member.index] = Result { try member.decision.response() } }
                    guard answers.contains(where: { $0 == nil }) else { return answers.map { $0! } }
                    // The rest of a halved batch: a fresh budget, from the state this commit left.
                    (attempt, deadline) = (0, clock.now.advanced(by: configuration.conflictBudget))
                    continue
                case let outcome:  // .conflict or .notLanded: run again on a fresh read, within the budget
                    cache.remove(key)
                    limit = max(1, decided.count / 2)
                    RequestMetrics.conflict(outcome == .conflict ? .version : .notLanded)
                    logger.debug(
                        outcome == .conflict ? "version conflict" : "commit did not land; running again",
                        metadata: [
                            "function": "\(key.function)", "attempt": "\(attempt)", "commands": "\(decided.count)",
                        ])
                    let now = clock.now
                    // A lost race is always run again once, however slow the first run was; the budget decides after.
                    if now < deadline || attempt == 1 {
                        // Full jitter over an exponential ceiling (4 ms doubling to 64 ms), cut to what the budget
                        // leaves.
                        let ceiling = Double(2 << min(attempt, 5)) / 1000
                        let pause = min(Duration.seconds(Double.random(in: 0...ceiling)), max(.zero, deadline - now))
                        try await Task.sleep(for: pause)
                        continue
                    }
                    // The budget is spent for every member not yet answered, those that never got to run
                    // included. A commit read back after a lost COMMIT, or a twin through another replica, may
                    // have stored a member's answer just now: that answer, not an error, is the truth (one query).
                    let unanswered = members.indices.filter { answers[$0] == nil }
                    let keyed = unanswered.filter { members[$0].input.claim != nil }
                    let stored = try await store.records(for: keyed.map { members[$0].input.claim! })
                    var replays: [Int: StoredAnswer] = [:]
                    for (index, record) in zip(keyed, stored)
                    where record?.fingerprint == members[index].input.claim!.fingerprint {
                        replays[index] = record
                    }
                    let spent = budgetSpent(outcome, attempts: attempt)
                    for index in unanswered {
                        answers[index] = replays[index].map { .success($0.response()) } ?? .failure(spent)
                    }
                    return answers.map { $0! }
                }
            } catch {
                // The database failed the batch as a whole (a read, or the commit): every member not yet answered
                // gets that error.
                for index in members.indices where answers[index] == nil { answers[index] = .failure(error) }
                return answers.map { $0! }
            }
        }
    }

    /// The error for commands whose commits kept losing until the budget was spent: 409, or 503 when the commit
    /// kept failing rather than losing.
    private func budgetSpent(_ outcome: CommitOutcome, attempts: Int) -> GatewayError {
        if case .notLanded(let certain) = outcome {
            return GatewayError(
                503,
                certain
                    ? "the database kept failing the commit; nothing was committed after \(attempts) runs in"
                        + " \(configuration.conflictBudget); try again"
                    : "the commit's outcome is unknown: the database connection was lost as it committed, and the"
                        + " command may or may not have taken effect; retry with the same Idempotency-Key to be safe",
                headers: [(name: "Retry-After", value: "1")])
        }
        return GatewayError(
            409, "the entity kept changing; gave up after \(attempts) runs in \(configuration.conflictBudget)",
            headers: [(name: "Retry-After", value: "1")])
    }

    private func commitThroughGate(_ request: CommitRequest, leases: [CommitLease]) async throws -> CommitOutcome {
        let needed = leases.filter { !$0.held.load(ordering: .acquiring) }
        if !needed.isEmpty {
            let open = gate.withLock { gate -> Bool in
                guard !gate.closed else { return false }
                gate.active += needed.count
                return true
            }
            guard open else {
                throw GatewayError(
                    503, "the gateway is shutting down; nothing was committed",
                    headers: [(name: "Retry-After", value: "1")])
            }
            for lease in needed { lease.held.store(true, ordering: .releasing) }
        }
        let started = ContinuousClock.now
        defer { metrics.commit(elapsed: ContinuousClock.now - started) }
        do {
            return try await store.commit(request)
        } catch let error as CommitUncertain {
            throw GatewayError(
                503,
                "the commit's outcome is unknown: the database connection was lost as it committed, and the command"
                    + " may or may not have taken effect; retry with an Idempotency-Key to be safe",
                logDetail: error.detail, headers: [(name: "Retry-After", value: "1")])
        }
    }

    /// What one run of the worker decided: what to commit, and what to answer (the reply with its ETag, or the
    /// function's refusal as a problem body).
    private struct Decision {
        var commit: CommitRequest?
        /// The state a `.replace` commit writes, parsed, for the cache.
        var newState: JSONValue = .null
        var body: [UInt8]
        var etag: String?
        var refusal: GatewayError?

        func stored(_ fingerprint: String) -> StoredAnswer {
            StoredAnswer(
                fingerprint: fingerprint, status: refusal?.status ?? 200, body: String(decoding: body, as: UTF8.self),
                etag: etag)
        }

        func response() throws -> HTTPResponse {
            if let refusal { throw refusal }
            return HTTPResponse(
                status: 200,
                headers: [(name: "Content-Type", value: "application/json"), (name: "ETag", value: etag ?? "")],
                body: body)
        }
    }

    private func decide(_ input: CommandInput, snapshot: EntitySnapshot, worker: Worker) async throws -> Decision {
        let answer: WorkerAnswer
        do {
            answer = try await worker(snapshot)
        } catch let error as GatewayError where error.isBusinessError {
            // The function refused: nothing to commit, but the refusal is an answer like any other (and is stored
            // under an Idempotency-Key).
            return Decision(commit: nil, body: error.response(requestID: input.requestID).body, refusal: error)
        }
        let commit = try Self.commitRequest(answer, input: input, snapshot: snapshot)
        var newState = JSONValue.null
        if case .replace(let state) = answer.change { newState = state }
        let version = commit?.versionAfter ?? snapshot.version
        return Decision(commit: commit, newState: newState, body: answer.reply.encoded(), etag: "\"\(version)\"")
    }

    /// What to write for an answer, or nil when nothing changed (no write, no new version).
    private static func commitRequest(_ answer: WorkerAnswer, input: CommandInput, snapshot: EntitySnapshot)
        throws(GatewayError) -> CommitRequest?
    {
        let manifest = input.manifest
        var change: CommitRequest.Change
        switch answer.change {
        case .unchanged: change = .unchanged
        case .delete where !snapshot.exists: change = .unchanged
        case .delete: change = .delete
        case .replace(let state) where state == snapshot.state && snapshot.version > 0: change = .unchanged
        case .replace(let state):
            let encoded = state.encodedString()
            guard encoded.utf8.count <= manifest.maxStateBytes else {
                throw GatewayError(
                    413,
                    "the new state is \(encoded.utf8.count) bytes, over max_state_bytes (\(manifest.maxStateBytes))")
            }
            if let number = EntityStore.numberBeyondJSONB(state) {
                throw GatewayError(
                    502, "the function returned a state the database cannot keep exactly; nothing was committed",
                    logDetail: "state holds \(number): jsonb would store it as an integer beyond 64 bits")
            }
            change = .replace(encoded)
        }
        let events = try answer.events.map { event throws(GatewayError) in
            try checked(event, "an event", limit: manifest.maxStateBytes)
        }
        let effects = try answer.effects.map { effect throws(GatewayError) -> CommitRequest.Effect in
            .init(
                function: effect.function, entity: effect.entity, command: effect.command,
                payload: try checked(effect.payload, "an effect's payload", limit: manifest.maxStateBytes),
                delayMs: effect.delayMs)
        }
        let request = CommitRequest(
            key: input.key, seenVersion: snapshot.version, change: change, events: events, effects: effects,
            principal: input.principal)
        return request.isVersionCheck ? nil : request
    }
}

/// An event or effect payload, encoded, refused like a state would be: over `limit` bytes (413), or holding a
/// number jsonb cannot keep exactly (502). Nothing of the answer commits.
private func checked(_ value: JSONValue, _ what: String, limit: Int) throws(GatewayError) -> String {
    let encoded = value.encodedString()
    guard encoded.utf8.count <= limit else {
        throw GatewayError(413, "\(what) is \(encoded.utf8.count) bytes, over max_state_bytes (\(limit))")
    }
    if let number = EntityStore.numberBeyondJSONB(value) {
        throw GatewayError(
            502, "the function returned \(what) the database cannot keep exactly; nothing was committed",
            logDetail: "\(what) holds \(number): jsonb would store it as an integer beyond 64 bits")
    }
    return encoded
}

/// Whether commits may start, and how many are under way.
private struct CommitGate {
    var closed = false
    var active = 0
}
