// A Jepsen-style fault checker. Three replicas of the built binary share a PostgreSQL cluster of the checker's own;
// eight client threads run operations on counters and sets (the `tally` fixture), each operation under an
// Idempotency-Key of its own, retried with the same key on another replica until it is acknowledged (a 2xx).
// Meanwhile a fault thread kills replicas with SIGKILL and restarts PostgreSQL (fast and immediate shutdowns), the
// clients make workers crash and hang up before answers arrive, and a trigger fails commits with SQLSTATE 40001.
// Afterwards every counter must equal its acknowledged increments and every set must hold exactly its acknowledged
// adds: nothing acknowledged is lost, nothing is applied twice. One run per fault, and one with all of them.
//
// STATEFN_CHECKER_OPS sets the number of operations of every run (by default each fault alone gets 6,000 and all
// faults together 12,000: about a minute in all on 2 cores); STATEFN_CHECKER_FAULTS (kill9, pg-restart,
// worker-crash, 40001, lost-reply, all; comma-separated) picks the runs; STATEFN_CHECKER_NO_KEYS=1 leaves the keys
// out, to see the checker catch the doubled operations they prevent. scripts/fault-check runs a larger one.
import Foundation
import StatefnJSON
import StatefnPostgres
import StatefnTestSupport
import Testing

@Suite("fault checker, end to end", .serialized)
struct FaultCheckerTests {
    /// Five minutes for a run of the default size (it takes 7–30 s), and a minute more per 5,000 operations asked
    /// for.
    static let timeLimit = max(
        5, (ProcessInfo.processInfo.environment["STATEFN_CHECKER_OPS"].flatMap { Int($0) } ?? 0) / 5000 + 2)

    @Test(
        "acknowledged operations survive faults exactly once", .timeLimit(.minutes(timeLimit)),
        arguments: FaultKind.allCases)
    func faultChecker(kind: FaultKind) async throws {
        let environment = ProcessInfo.processInfo.environment
        let selected = (environment["STATEFN_CHECKER_FAULTS"] ?? "").split(separator: ",").map {
            $0.trimmingCharacters(in: .whitespaces)
        }
        if !selected.isEmpty, !selected.contains(kind.rawValue) { return }
        let operations = environment["STATEFN_CHECKER_OPS"].flatMap { Int($0) } ?? kind.defaultOperations
        let started = Date()
        let world = try await World.start(kind: kind, operations: operations)
        var outcome: Result<Report, any Error>
        do {
            outcome = .success(try await world.run(operations: operations))
        } catch {
            outcome = .failure(error)
        }
        let stopStatuses = await (try? onThread { world.shutdown() }) ?? []
        let report = try outcome.get()
        print(report.summary(kind: kind, seconds: Date().timeIntervalSince(started)))
        print(report.details(kind: kind))

        #expect(report.tried == operations, "operations stopped early: \(report.abortReason ?? "")")
        #expect(report.acknowledged == report.tried, "operations never acknowledged")
        #expect(report.lost == 0, "acknowledged but absent: \(report.examples)")
        #expect(report.doubled == 0, "applied more than once: \(report.examples)")
        #expect(report.phantoms == 0, "present but never attempted: \(report.examples)")
        #expect(report.replyAnomalies == 0, "counter replies not a permutation of 1...n: \(report.examples)")
        #expect(report.readyAfterFaults, "a replica did not become ready again after the faults")
        #expect(
            report.replicaDisagreements == 0,
            "a replica's raw state or query answer differs from the database's: \(report.examples)")
        #expect(
            report.probeFailures == 0, "a repeated Idempotency-Key was not replayed as stored: \(report.probeNotes)")
        #expect(report.unexpectedStatuses.isEmpty, "statuses a retry cannot fix: \(report.unexpectedStatuses)")
        #expect(report.tally.statuses[500] == nil, "500s (DESIGN.md names 503 for a database that went away): \(report.tally.statusExamples[500] ?? "")")
        #expect(report.faults.conninfoChanged == false, "PostgreSQL's conninfo changed across a restart")
        #expect(report.faults.errors.isEmpty, "fault injection failed: \(report.faults.errors)")
        if kind.kills { #expect(report.faults.kills > 0) }
        if kind.restartsPostgres { #expect(report.faults.postgresRestarts > 0) }
        if kind.crashesWorkers { #expect(report.tally.crashesSeen > 0, "no worker crash was seen as a 502") }
        if kind.injects40001 { #expect(report.injected40001 > 0, "the trigger injected no 40001") }
        if kind.losesReplies { #expect(report.tally.repliesLost > 0) }
        #expect(stopStatuses.allSatisfy { $0 == 0 }, "replica exit statuses on SIGTERM: \(stopStatuses)")
    }
}

extension FaultCheckerTests {
    /// The faults of one run.
    enum FaultKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
        case kill9
        case pgRestart = "pg-restart"
        case workerCrash = "worker-crash"
        case serialization = "40001"
        case lostReply = "lost-reply"
        case all

        var testDescription: String { rawValue }
        var kills: Bool { self == .kill9 || self == .all }
        var restartsPostgres: Bool { self == .pgRestart || self == .all }
        var crashesWorkers: Bool { self == .workerCrash || self == .all }
        var injects40001: Bool { self == .serialization || self == .all }
        var losesReplies: Bool { self == .lostReply || self == .all }

        var defaultOperations: Int { self == .all ? 12000 : 6000 }
    }

    // MARK: - Operations and what the clients saw

    /// One logical operation: sent until acknowledged, always with the same key and body.
    struct Operation: Sendable {
        enum Kind: Sendable { case incr, add }
        var kind: Kind
        var entity: String
        /// The unique item of an `add`.
        var item: String
        var key: String
        var attempts = 0
        var acknowledged = false
        /// The acknowledged answer's body.
        var reply = ""

        var path: String { kind == .incr ? "/v1/tally/\(entity)/incr" : "/v1/tally/\(entity)/add" }
        var body: String { kind == .incr ? "{}" : #"{"item":"\#(item)"}"# }
    }

    /// What clients saw, summed over them with `add`.
    struct Tally: Sendable {
        var retries = 0
        /// Answers by status; 0 counts transport failures (refused, reset, closed, timed out).
        var statuses: [Int: Int] = [:]
        var crashesAsked = 0
        var crashesSeen = 0
        var repliesLost = 0
        var replayed = 0
        var transportErrors: [String] = []
        /// The first body seen for each non-2xx status.
        var statusExamples: [Int: String] = [:]

        mutating func add(_ other: Tally) {
            retries += other.retries
            statuses.merge(other.statuses, uniquingKeysWith: +)
            crashesAsked += other.crashesAsked
            crashesSeen += other.crashesSeen
            repliesLost += other.repliesLost
            replayed += other.replayed
            transportErrors += other.transportErrors.prefix(max(0, 5 - transportErrors.count))
            statusExamples.merge(other.statusExamples) { first, _ in first }
        }
    }

    struct ClientLog: Sendable {
        var operations: [Operation] = []
        var tally = Tally()
        /// Why the last operation that ran out of time did.
        var giveUp = ""
    }

    struct FaultCounts: Sendable {
        var kills = 0
        var postgresRestarts = 0
        /// Of the restarts, those after an immediate shutdown (SIGQUIT: no checkpoint, crash recovery at start).
        var postgresCrashes = 0
        var conninfoChanged = false
        var errors: [String] = []
    }

    // MARK: - The world: a cluster, three replicas, faults

    /// The checker's PostgreSQL cluster and replicas. The replica list changes under the clients (a killed replica is
    /// replaced on a new port), so it is behind `lock`, as are the crash budget and the flags.
    final class World: @unchecked Sendable {
        static let fixtures = GatewayProcess.repositoryRoot + "/Tests/EndToEndTests/Fixtures/functions"
        static let replicaCount = 3
        static let clientCount = 8
        /// Per attempt, when worker crashes are on.
        static let crashRate = 0.02
        /// A replica's pool calls 5 crashes within 30 s a crash loop and answers 503 for 30 s: ask for at most 4 in
        /// any 35 s per replica (a request may wait in the queue a little before it reaches the worker).
        static let crashBudget = (count: 4, seconds: 35.0)
        static let rate40001 = 0.1
        /// Per attempt, when lost replies are on.
        static let lostReplyRate = 0.03
        static let attemptTimeout = 10.0
        static let operationDeadline = 60.0
        /// STATEFN_CHECKER_NO_KEYS=1 sends no Idempotency-Key, to see the checker catch what the keys prevent.
        static let withoutKeys = ProcessInfo.processInfo.environment["STATEFN_CHECKER_NO_KEYS"] == "1"

        let kind: FaultKind
        /// Ten hot counters, and sets enough that none grows past about 500 items (its whole state goes to the worker
        /// and back on every add).
        let counters: [String]
        let sets: [String]
        let directory: String
        let postgres: EmbeddedPostgres
        let conninfo: String

        private let lock = NSLock()
        private var replicas: [GatewayProcess] = []
        /// The first replica's development key (`admin:*`), which every client sends: the replicas share the
        /// database, and so the key. Set once, before the clients start.
        private(set) var authorization: [String: String] = [:]
        private var clientsDone = false
        private var abortReason: String?
        private var crashTimes: [Int: [Date]] = [:]
        /// Log lines of requests a replica answered with 500 (a status no fault should cause), from every replica.
        private var serverErrors: [String] = []

        private init(kind: FaultKind, operations: Int) throws {
            self.kind = kind
            counters = (0..<10).map { "e\($0)" }
            sets = (0..<max(10, operations / 1000)).map { "s\($0)" }
            directory = TestDatabase.makeTemporaryDirectory()
            postgres = EmbeddedPostgres(directory: directory + "/data", logger: TestDatabase.logger, flushesToDisk: false)
            do {
                conninfo = try postgres.start()
            } catch {
                postgres.stop()
                try? FileManager.default.removeItem(atPath: directory)
                throw error
            }
        }

        /// A cluster of its own (restarting it must not disturb the shared one), the first replica (which applies the
        /// migrations), the 40001 trigger if asked for, then the other replicas.
        static func start(kind: FaultKind, operations: Int) async throws -> World {
            let world = try await onThread { try World(kind: kind, operations: operations) }
            do {
                let first = try await onThread { try world.startReplica() }
                world.lock.withLock { world.replicas = [first] }
                world.authorization = first.authorization
                if kind.injects40001 { try await world.installTrigger() }
                let others = try await onThreads(replicaCount - 1) { _ in try world.startReplica() }
                world.lock.withLock { world.replicas += others }
                return world
            } catch {
                _ = try? await onThread { world.shutdown() }
                throw error
            }
        }

        func startReplica() throws -> GatewayProcess {
            try GatewayProcess(
                arguments: ["--functions", Self.fixtures], environment: ["DATABASE_URL": conninfo], startTimeout: 60)
        }

        /// Stops every replica (SIGTERM; their exit statuses are returned), then the cluster, and deletes it.
        func shutdown() -> [Int32] {
            let running = lock.withLock {
                defer { replicas = [] }
                return replicas
            }
            let statuses = running.map { $0.stop() }
            postgres.stop()
            try? FileManager.default.removeItem(atPath: directory)
            return statuses
        }

        private func withDatabase<T: Sendable>(_ body: (PostgresPool) async throws -> T) async throws -> T {
            let pool = PostgresPool(config: try PostgresConfig(conninfo), size: 1, logger: TestDatabase.logger)
            defer { pool.close() }
            return try await body(pool)
        }

        /// In the checker's database only (migrations stay trigger-free): a fraction of writes to `entities`, and of
        /// inserts into `idempotency`, fail with 40001. A sequence counts them: nextval is not rolled back.
        private func installTrigger() async throws {
            try await withDatabase { pool in
                _ = try await pool.execute("CREATE SEQUENCE statefn_test_injected")
                _ = try await pool.execute(
                    """
                    CREATE FUNCTION statefn_test_inject_40001() RETURNS trigger LANGUAGE plpgsql AS $$
                    BEGIN
                        IF random() < \(Self.rate40001) THEN
                            PERFORM nextval('statefn_test_injected');
                            RAISE EXCEPTION 'injected serialization failure' USING ERRCODE = '40001';
                        END IF;
                        RETURN NEW;
                    END $$
                    """)
                _ = try await pool.execute(
                    """
                    CREATE TRIGGER statefn_test_inject BEFORE INSERT OR UPDATE ON entities
                    FOR EACH ROW EXECUTE FUNCTION statefn_test_inject_40001()
                    """)
                let idempotency = try await pool.execute("SELECT to_regclass('idempotency') IS NOT NULL")
                if idempotency.rows.first?.first == "t" {
                    _ = try await pool.execute(
                        """
                        CREATE TRIGGER statefn_test_inject BEFORE INSERT ON idempotency
                        FOR EACH ROW EXECUTE FUNCTION statefn_test_inject_40001()
                        """)
                }
            }
        }

        private func injected40001() async throws -> Int {
            guard kind.injects40001 else { return 0 }
            return try await withDatabase { pool in
                let result = try await pool.execute(
                    "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM statefn_test_injected")
                return Int(result.rows.first?.first.flatMap { $0 } ?? "") ?? 0
            }
        }

        // MARK: Running

        func run(operations: Int) async throws -> Report {
            let perClient = (0..<Self.clientCount).map {
                operations / Self.clientCount + ($0 < operations % Self.clientCount ? 1 : 0)
            }
            let clientsStarted = Date()
            async let faultsDone = onThread { self.injectFaults() }
            let logs: [ClientLog]
            do {
                logs = try await onThreads(Self.clientCount) { index in self.runClient(index, count: perClient[index]) }
            } catch {
                lock.withLock { clientsDone = true }
                _ = try? await faultsDone
                throw error
            }
            lock.withLock { clientsDone = true }
            let faults = try await faultsDone
            let clientSeconds = Date().timeIntervalSince(clientsStarted)
            var report = try await verify(logs: logs, faults: faults)
            report.clientSeconds = clientSeconds
            report.abortReason = lock.withLock { abortReason }
            return report
        }

        private var isDone: Bool { lock.withLock { clientsDone } }

        private func port(of index: Int) -> Int { lock.withLock { replicas[index % replicas.count].port } }

        /// A crash for this attempt, if the replica's budget allows one.
        private func takeCrash(port: Int) -> Bool {
            guard kind.crashesWorkers, Double.random(in: 0..<1) < Self.crashRate else { return false }
            return lock.withLock {
                let now = Date()
                var times = (crashTimes[port] ?? []).filter { now.timeIntervalSince($0) < Self.crashBudget.seconds }
                defer { crashTimes[port] = times }
                guard times.count < Self.crashBudget.count else { return false }
                times.append(now)
                return true
            }
        }

        /// The fault thread: until the clients are done, kills a replica every 1–2 s and restarts PostgreSQL every
        /// 2–3 s, one fault at a time, so a replica never starts while the database is down.
        private func injectFaults() -> FaultCounts {
            var counts = FaultCounts()
            guard kind.kills || kind.restartsPostgres else { return counts }
            let start = Date()
            var nextKill = kind.kills ? 1.0 : .infinity
            var nextRestart = kind.restartsPostgres ? (kind.kills ? 2.5 : 1.5) : .infinity
            while !isDone {
                Thread.sleep(forTimeInterval: 0.05)
                let now = Date().timeIntervalSince(start)
                if now >= nextKill {
                    killReplica(&counts)
                    nextKill = Date().timeIntervalSince(start) + Double.random(in: 1...2)
                } else if now >= nextRestart {
                    restartPostgres(&counts)
                    nextRestart = Date().timeIntervalSince(start) + Double.random(in: 2...3)
                }
            }
            return counts
        }

        private func killReplica(_ counts: inout FaultCounts) {
            let index = Int.random(in: 0..<Self.replicaCount)
            let victim = lock.withLock { replicas[index] }
            victim.stop(signal: SIGKILL)
            harvestServerErrors(victim)
            counts.kills += 1
            for attempt in 1...3 {
                do {
                    let replacement = try startReplica()
                    lock.withLock { replicas[index] = replacement }
                    return
                } catch {
                    counts.errors.append("replica restart \(attempt): \(error)")
                }
            }
        }

        /// Every other restart is an immediate shutdown (what `pg_ctl -m immediate` sends: SIGQUIT to the
        /// postmaster), so commits in flight end with their outcome unknown to the gateway; the others are fast ones.
        private func restartPostgres(_ counts: inout FaultCounts) {
            if counts.postgresRestarts % 2 == 1, let postmaster = postmasterPID() {
                kill(postmaster, SIGQUIT)
                let deadline = Date().addingTimeInterval(30)
                while kill(postmaster, 0) == 0, Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
                counts.postgresCrashes += 1
            } else {
                postgres.stop()
            }
            Thread.sleep(forTimeInterval: Double.random(in: 0.1...0.5))
            for attempt in 1...3 {
                do {
                    let again = try postgres.start()
                    if again != conninfo { counts.conninfoChanged = true }
                    counts.postgresRestarts += 1
                    return
                } catch {
                    counts.errors.append("PostgreSQL start \(attempt): \(error)")
                    Thread.sleep(forTimeInterval: 1)
                }
            }
        }

        private func harvestServerErrors(_ replica: GatewayProcess) {
            let lines = replica.logs.filter { $0.contains(#""status":"500""#) }
            lock.withLock { serverErrors += lines.prefix(max(0, 5 - serverErrors.count)) }
        }

        private func postmasterPID() -> pid_t? {
            let text = try? String(contentsOfFile: directory + "/data/postmaster.pid", encoding: .utf8)
            return text?.split(separator: "\n").first.flatMap { pid_t($0) }
        }

        private func runClient(_ index: Int, count: Int) -> ClientLog {
            var log = ClientLog()
            // Kept alive per replica port, and dropped after any transport failure.
            var connections: [Int: TestHTTPClient] = [:]
            for sequence in 0..<count {
                if lock.withLock({ abortReason != nil }) { break }
                let counter = Bool.random()
                var operation = Operation(
                    kind: counter ? .incr : .add,
                    entity: counter ? counters.randomElement()! : sets.randomElement()!,
                    item: "c\(index)-\(sequence)", key: "op-" + UUID().uuidString)
                if let response = deliver(&operation, log: &log, connections: &connections, faults: true) {
                    operation.acknowledged = true
                    operation.reply = response.text
                } else {
                    lock.withLock { if abortReason == nil { abortReason = log.giveUp } }
                }
                log.operations.append(operation)
            }
            return log
        }

        /// Sends `operation` until a replica acknowledges it (its answer), or nil after `operationDeadline`. Each
        /// attempt carries the same key and body; a failed one is retried on another replica after 10–50 ms. With
        /// `faults`, an attempt may ask its worker to crash, or hang up before the answer (and then retry at once).
        private func deliver(
            _ operation: inout Operation, log: inout ClientLog, connections: inout [Int: TestHTTPClient],
            faults: Bool
        ) -> TestHTTPResponse? {
            let deadline = Date().addingTimeInterval(Self.operationDeadline)
            var target = Int.random(in: 0..<Self.replicaCount)
            var lastFailure = ""
            while true {
                operation.attempts += 1
                let port = port(of: target)
                let crash = faults && takeCrash(port: port)
                let hangUp = faults && !crash && kind.losesReplies && Double.random(in: 0..<1) < Self.lostReplyRate
                var headers = ["X-Request-Id": (crash ? "crash-" : "req-") + UUID().uuidString]
                if !Self.withoutKeys { headers["Idempotency-Key"] = operation.key }
                let client = connections[port] ?? TestHTTPClient(port: port, defaultHeaders: authorization)
                connections[port] = nil
                if crash { log.tally.crashesAsked += 1 }
                if hangUp {
                    // The request goes out and the client hangs up before the answer, at once or up to 20 ms later:
                    // the retry may reach another replica while this one still runs it, or after it committed.
                    try? client.sendAndHangUp(
                        "POST", operation.path, body: operation.body, headers: headers,
                        after: Double.random(in: 0...0.02))
                    log.tally.repliesLost += 1
                    lastFailure = "hung up"
                } else {
                    do {
                        let response = try client.requestOnce(
                            "POST", operation.path, body: operation.body, headers: headers,
                            timeout: Self.attemptTimeout)
                        connections[port] = client
                        log.tally.statuses[response.status, default: 0] += 1
                        if crash && response.status == 502 { log.tally.crashesSeen += 1 }
                        if (200..<300).contains(response.status) {
                            if response.headers["idempotent-replayed"] == "true" { log.tally.replayed += 1 }
                            return response
                        }
                        lastFailure = "\(response.status) \(response.text.prefix(300))"
                        if log.tally.statusExamples[response.status] == nil {
                            log.tally.statusExamples[response.status] = lastFailure
                        }
                    } catch {
                        log.tally.statuses[0, default: 0] += 1
                        lastFailure = "\(error)"
                        if log.tally.transportErrors.count < 5 { log.tally.transportErrors.append("\(error)") }
                    }
                }
                guard Date() < deadline else {
                    log.giveUp =
                        "\(operation.path) key \(operation.key) not acknowledged after \(operation.attempts) "
                        + "attempts; last: \(lastFailure)"
                    return nil
                }
                log.tally.retries += 1
                if hangUp {
                    // Soon, and half the time to the same replica: the first attempt may well still be running there.
                    if Bool.random() { target = (target + Int.random(in: 1..<Self.replicaCount)) % Self.replicaCount }
                    Thread.sleep(forTimeInterval: Double.random(in: 0...0.005))
                } else {
                    target = (target + Int.random(in: 1..<Self.replicaCount)) % Self.replicaCount
                    Thread.sleep(forTimeInterval: Double.random(in: 0.01...0.05))
                }
            }
        }

        /// Waits until every replica says it is ready (its database reachable again after the last restart).
        private func waitUntilReady() -> Bool {
            let deadline = Date().addingTimeInterval(30)
            for port in lock.withLock({ replicas.map(\.port) }) {
                while (try? TestHTTPClient(port: port, defaultHeaders: authorization).requestOnce("GET", "/readyz", timeout: 5))?.status != 200 {
                    guard Date() < deadline else { return false }
                    Thread.sleep(forTimeInterval: 0.1)
                }
            }
            return true
        }

        // MARK: Checking

        private func verify(logs: [ClientLog], faults: FaultCounts) async throws -> Report {
            var report = Report(logs: logs, faults: faults)
            let operations = logs.flatMap(\.operations)
            report.readyAfterFaults = try await onThread { self.waitUntilReady() }
            report.injected40001 = try await injected40001()
            let states = try await finalStates()
            report.check(operations: operations, states: states, counters: counters, sets: sets)
            let (disagreements, notes) = try await onThread { self.compareReplicas(with: states) }
            report.replicaDisagreements = disagreements
            report.examples += notes
            // Last, as they would otherwise count among the doubled: repeats of acknowledged operations change nothing.
            report.probeNotes = try await onThread { self.probeReplays(operations) }
            let afterProbes = try await finalStates()
            for entity in counters + sets where afterProbes[entity] != states[entity] {
                report.probeNotes.append(
                    "\(entity) changed after the repeats: \(afterProbes[entity]?.encodedString() ?? "-")")
            }
            report.probeFailures = report.probeNotes.count
            for replica in lock.withLock({ replicas }) { harvestServerErrors(replica) }
            report.serverErrors = lock.withLock { serverErrors }
            return report
        }

        /// The database's state of every tally entity.
        private func finalStates() async throws -> [String: JSONValue] {
            let rows = try await withDatabase { pool in
                try await pool.execute("SELECT entity_id, state::text FROM entities WHERE function = 'tally'").rows
            }
            var states: [String: JSONValue] = [:]
            for row in rows {
                guard let entity = row[0], let text = row[1] else { continue }
                states[entity] = try JSONValue.parse(text, limits: JSONLimits(maxBytes: .max, maxDepth: 16))
            }
            return states
        }

        /// Sends some acknowledged operations again, key and body unchanged, each retried like a client's (a replica
        /// may still be reconnecting): each must come back as the stored answer, marked replayed, without running
        /// again.
        private func probeReplays(_ operations: [Operation]) -> [String] {
            var notes: [String] = []
            var log = ClientLog()
            var connections: [Int: TestHTTPClient] = [:]
            for original in operations.filter(\.acknowledged).shuffled().prefix(30) {
                var operation = original
                guard let response = deliver(&operation, log: &log, connections: &connections, faults: false) else {
                    notes.append(log.giveUp)
                    continue
                }
                if response.text != original.reply || response.headers["idempotent-replayed"] != "true" {
                    notes.append(
                        "\(operation.path): \(response.status) \(response.text.prefix(100)) replayed="
                            + "\(response.headers["idempotent-replayed"] ?? "-"), first answer \(original.reply)")
                }
            }
            return notes
        }

        /// The raw state (`GET /v1/tally/<e>`) and the `get` query's answer on every replica, against the database's.
        /// How many answers of the replicas differ from the database's final states, with the first few described.
        /// A request that fails (a stale connection after a restart, say) is tried again, up to three times: only a
        /// 200 or 404 answer that differs, or no answer at all, is a disagreement.
        private func compareReplicas(with states: [String: JSONValue]) -> (count: Int, notes: [String]) {
            func fetch(_ client: TestHTTPClient, _ path: String) -> (JSONValue?, String) {
                var last = "no answer"
                for _ in 0..<3 {
                    do {
                        let response = try client.request("GET", path)
                        if response.status == 404 { return (nil, response.text) }
                        if response.status == 200 {
                            let value = try? JSONValue.parse(response.text, limits: JSONLimits(maxBytes: .max, maxDepth: 16))
                            return (value, response.text)
                        }
                        last = "\(response.status) \(response.text)"
                    } catch {
                        last = "\(error)"
                    }
                    Thread.sleep(forTimeInterval: 0.2)
                }
                return (nil, last)
            }
            var disagreements = 0
            var notes: [String] = []
            for port in lock.withLock({ replicas.map(\.port) }) {
                let client = TestHTTPClient(port: port, defaultHeaders: authorization)
                for entity in counters + sets {
                    // The raw state (404 when absent), and the query's answer when there is a state to ask about.
                    var paths = ["/v1/tally/\(entity)"]
                    if states[entity] != nil { paths.append("/v1/tally/\(entity)/get") }
                    for (index, path) in paths.enumerated() {
                        let (value, text) = fetch(client, path)
                        let answer = index == 0 ? value?["state"] : value
                        guard answer != states[entity] else { continue }
                        disagreements += 1
                        if notes.count < 5 {
                            notes.append("port \(port) \(path): \(text.prefix(200)), database: \(states[entity].map { $0.encodedString() } ?? "absent")")
                        }
                    }
                }
            }
            return (disagreements, notes)
        }
    }

    // MARK: - The verdict

    struct Report: Sendable {
        var tried = 0
        var acknowledged = 0
        var tally = Tally()
        var serverErrors: [String] = []
        var readyAfterFaults = false
        var faults: FaultCounts
        var injected40001 = 0
        var lost = 0
        var doubled = 0
        var phantoms = 0
        var replyAnomalies = 0
        var replicaDisagreements = 0
        var probeFailures = 0
        var probeNotes: [String] = []
        var examples: [String] = []
        var clientSeconds = 0.0
        var abortReason: String?

        init(logs: [ClientLog], faults: FaultCounts) {
            self.faults = faults
            for log in logs {
                tried += log.operations.count
                acknowledged += log.operations.filter(\.acknowledged).count
                tally.add(log.tally)
            }
        }

        /// Statuses that no retry turns into a 2xx: a request the gateway should never have refused.
        var unexpectedStatuses: [Int: Int] {
            tally.statuses.filter { status, _ in (400..<500).contains(status) && ![408, 409, 429].contains(status) }
        }

        /// A counter: acknowledged ≤ final ≤ attempted, and its acknowledged replies are distinct values in
        /// 1...final.
        /// A set: acknowledged ⊆ final ⊆ attempted, no item twice, no add applied twice ("dups").
        mutating func check(
            operations: [Operation], states: [String: JSONValue], counters: [String], sets: [String]
        ) {
            func note(_ text: String) { if examples.count < 10 { examples.append(text) } }
            let byEntity = Dictionary(grouping: operations, by: \.entity)
            for entity in counters {
                let ops = byEntity[entity] ?? []
                let acked = ops.filter(\.acknowledged)
                let final = Int(states[entity]?["n"]?.integerValue ?? 0)
                if final < acked.count {
                    lost += acked.count - final
                    note("\(entity): n = \(final), \(acked.count) increments acknowledged")
                }
                if final > ops.count {
                    doubled += final - ops.count
                    note("\(entity): n = \(final), \(acked.count) of \(ops.count) increments acknowledged")
                }
                let replies = acked.compactMap { op in
                    (try? JSONValue.parse(op.reply, limits: .client))?["n"]?.integerValue.map(Int.init)
                }
                let distinct = Set(replies)
                let anomalies =
                    (replies.count - distinct.count) + (acked.count - replies.count)
                    + distinct.filter { $0 < 1 || $0 > final }.count
                if anomalies > 0 {
                    replyAnomalies += anomalies
                    note("\(entity): \(anomalies) replies repeated, missing or beyond n = \(final)")
                }
            }
            for entity in sets {
                let ops = byEntity[entity] ?? []
                let acked = Set(ops.filter(\.acknowledged).map(\.item))
                let attempted = Set(ops.map(\.item))
                let items = states[entity]?["items"]?.arrayValue?.compactMap(\.stringValue) ?? []
                let present = Set(items)
                let missing = acked.subtracting(present)
                let extra = present.subtracting(attempted)
                let dups = Int(states[entity]?["dups"]?.integerValue ?? 0) + (items.count - present.count)
                lost += missing.count
                phantoms += extra.count
                doubled += dups
                if !missing.isEmpty { note("\(entity): acknowledged adds missing: \(missing.sorted().prefix(5))") }
                if !extra.isEmpty { note("\(entity): items never attempted: \(extra.sorted().prefix(5))") }
                if dups > 0 { note("\(entity): \(dups) adds applied twice") }
            }
        }

        func summary(kind: FaultKind, seconds: Double) -> String {
            let rate = kind.injects40001 ? "\(World.rate40001)" : "0"
            let parts = [
                "fault checker [\(kind.rawValue)]: \(tried) ops tried, \(acknowledged) acknowledged, "
                    + "\(tally.retries) retries",
                "faults: \(faults.kills) kills, \(faults.postgresRestarts) pg restarts "
                    + "(\(faults.postgresCrashes) immediate), \(tally.crashesSeen) worker crashes, "
                    + "\(tally.repliesLost) replies lost, 40001 rate \(rate) (\(injected40001) injected)",
                "lost \(lost), doubled \(doubled)",
                String(format: "%.1f s", seconds),
            ]
            return parts.joined(separator: "; ")
        }

        func details(kind: FaultKind) -> String {
            let statusText = tally.statuses.sorted { $0.key < $1.key }.map {
                "\($0.key == 0 ? "transport" : "\($0.key)"): \($0.value)"
            }
            let parts = [
                "fault checker [\(kind.rawValue)] details: statuses {\(statusText.joined(separator: ", "))}",
                "\(tally.replayed) answers replayed", "crashes asked \(tally.crashesAsked), seen as 502 \(tally.crashesSeen)",
                "phantoms \(phantoms)", "reply anomalies \(replyAnomalies)",
                "replica disagreements \(replicaDisagreements)", "replay probe failures \(probeFailures)",
                "clients ran " + String(format: "%.1f s", clientSeconds),
            ]
            var text = parts.joined(separator: "; ")
            if !examples.isEmpty { text += "\n  examples: " + examples.joined(separator: "\n    ") }
            if !probeNotes.isEmpty { text += "\n  probes: " + probeNotes.prefix(5).joined(separator: "\n    ") }
            if !tally.statusExamples.isEmpty {
                let answers = tally.statusExamples.sorted { $0.key < $1.key }.map(\.value)
                text += "\n  answers: " + answers.joined(separator: "\n    ")
            }
            if !serverErrors.isEmpty {
                text += "\n  500s in the replicas' logs: " + serverErrors.joined(separator: "\n    ")
            }
            if !tally.transportErrors.isEmpty { text += "\n  transport errors: " + tally.transportErrors.joined(separator: "; ") }
            if !faults.errors.isEmpty { text += "\n  fault errors: " + faults.errors.joined(separator: "; ") }
            if let abortReason { text += "\n  aborted: " + abortReason }
            return text
        }
    }
}
