// A hot entity's queued commands run one after another and commit once (Committer), against a real PostgreSQL.
// The worker here is a closure, so that a test can hold the entity while it queues exactly the commands it wants;
// the end-to-end suite drives the same path with real worker processes.
import Logging
import StatefnHTTP
import StatefnJSON
import StatefnPostgres
import StatefnTestSupport
import StatefnWorkers
import Synchronization
import Testing

@testable import StatefnCore

@Suite("hot-entity batches", .timeLimit(.minutes(2)))
struct BatchingTests {
    typealias Worker = @Sendable (EntitySnapshot) async throws -> WorkerAnswer

    struct Setup {
        var pool: PostgresPool
        var store: EntityStore
        var committer: Committer
    }

    static func setup() async throws -> Setup {
        let pool = try await EntityStoreTests.migratedPool()
        let store = EntityStore(pool: pool, logger: EntityStoreTests.logger)
        return Setup(
            pool: pool, store: store,
            committer: Committer(configuration: CommitterConfiguration(), store: store, logger: EntityStoreTests.logger)
        )
    }

    static func input(_ entity: String, key token: String? = nil, ifMatch: Int64? = nil) -> CommandInput {
        let key = EntityKey(function: "f", entity: entity)
        return CommandInput(
            key: key, manifest: FunctionManifest(), expectedVersion: ifMatch,
            claim: token.map { IdempotencyClaim(caller: "alice", key: key, token: $0, fingerprint: "fp-" + $0) },
            principal: "null", requestID: "r", lease: CommitLease())
    }

    static func answer(_ json: JSONValue) -> WorkerAnswer { try! WorkerAnswer(json) }

    /// `incr`: n + 1, replied.
    static let incr: Worker = { snapshot in
        let n = (snapshot.state["n"]?.integerValue ?? 0) + 1
        return answer(["reply": ["n": .integer(n)], "state": ["n": .integer(n)]])
    }

    /// Runs the first command with `hold` as its worker (it waits until every other command is queued behind it),
    /// then the others, and returns every answer in order.
    static func run(
        _ committer: Committer, entity: String, first: CommandInput, then others: [(CommandInput, Worker)]
    ) async throws -> [Result<HTTPResponse, any Error>] {
        let released = Mutex(false)
        let hold: Worker = { snapshot in
            while !released.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(2)) }
            return answer(["reply": "held"])
        }
        let leader = Task { await result { try await committer.execute(first, worker: hold) } }
        var tasks: [Task<Result<HTTPResponse, any Error>, Never>] = []
        // Each queued before the next is sent, so that their order is the order they arrive in. (A first command
        // answered from its stored record holds nothing: then the wait gives up after a second.)
        func queued(_ count: Int) async throws {
            let deadline = ContinuousClock.now + .seconds(1)
            while committer.queuedCommands != count, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(1))
            }
        }
        for (index, (input, worker)) in others.enumerated() {
            try await queued(index)
            tasks.append(Task { await result { try await committer.execute(input, worker: worker) } })
        }
        try await queued(others.count)
        released.withLock { $0 = true }
        var answers = [await leader.value]
        for task in tasks { answers.append(await task.value) }
        return answers
    }

    static func text(_ answer: Result<HTTPResponse, any Error>) -> String {
        switch answer {
        case .success(let response):
            "\(response.status) \(String(decoding: response.body, as: UTF8.self)) "
                + (response.headers.first { $0.name == "ETag" }?.value ?? "-")
        case .failure(let error as GatewayError): "\(error.status)"
        case .failure(let error): "\(error)"
        }
    }

    @Test("set then remove on an entity never written commit together as a tombstone, with the versions handed out")
    func createThenDelete() async throws {
        let setup = try await Self.setup()
        defer { setup.pool.close() }
        let runs = Mutex(0)
        let set: Worker = { _ in
            runs.withLock { $0 += 1 }
            return Self.answer(["reply": "set", "state": ["n": 1]])
        }
        let remove: Worker = { _ in
            runs.withLock { $0 += 1 }
            return Self.answer(["reply": "removed", "delete": true])
        }
        let answers = try await Self.run(
            setup.committer, entity: "cd", first: Self.input("cd"),
            then: [(Self.input("cd"), set), (Self.input("cd"), remove)])
        #expect(answers.map(Self.text) == [#"200 "held" "0""#, #"200 "set" "1""#, #"200 "removed" "2""#])
        #expect(
            try await setup.store.load(EntityKey(function: "f", entity: "cd"))
                == EntitySnapshot(state: .null, version: 2))
        #expect(setup.committer.batchStatistics.batches == 2)
        #expect(runs.withLock { $0 } == 2, "the batch lost its commit and ran again")
    }

    @Test("a command that fails alone in a batch gets its error; the others commit as if it had not been sent")
    func failureStaysItsOwn() async throws {
        let setup = try await Self.setup()
        defer { setup.pool.close() }
        let crash: Worker = { _ in throw GatewayError(502, "the function's worker crashed") }
        let answers = try await Self.run(
            setup.committer, entity: "fa", first: Self.input("fa"),
            then: [(Self.input("fa"), Self.incr), (Self.input("fa"), crash), (Self.input("fa"), Self.incr)])
        #expect(answers.map(Self.text) == [#"200 "held" "0""#, #"200 {"n":1} "1""#, "502", #"200 {"n":2} "2""#])
        #expect(
            try await setup.store.load(EntityKey(function: "f", entity: "fa"))
                == EntitySnapshot(state: ["n": 2], version: 2))
    }

    @Test("commands with and without Idempotency-Keys, and with If-Match, never share a batch; order holds")
    func onlyAlikeCommandsShareABatch() async throws {
        let setup = try await Self.setup()
        defer { setup.pool.close() }
        let answers = try await Self.run(
            setup.committer, entity: "mx", first: Self.input("mx"),
            then: [
                (Self.input("mx", key: "a"), Self.incr), (Self.input("mx", key: "b"), Self.incr),
                (Self.input("mx"), Self.incr), (Self.input("mx"), Self.incr),
                (Self.input("mx", ifMatch: 4), Self.incr), (Self.input("mx", ifMatch: 9), Self.incr),
                (Self.input("mx"), Self.incr),
            ])
        #expect(
            answers.map(Self.text) == [
                #"200 "held" "0""#, #"200 {"n":1} "1""#, #"200 {"n":2} "2""#, #"200 {"n":3} "3""#, #"200 {"n":4} "4""#,
                #"200 {"n":5} "5""#, "412", #"200 {"n":6} "6""#,
            ])
        // The first alone; a+b; the two without keys; each If-Match alone; the last.
        #expect(setup.committer.batchStatistics == (batches: 6, commands: 8))
        let records = try await setup.pool.execute("SELECT count(DISTINCT expires_at) FROM idempotency").rows
        #expect(records == [["1"]], "a and b are one commit")
    }

    @Test("a batch whose every command was answered before replays them all and runs nothing")
    func replayedBatch() async throws {
        let setup = try await Self.setup()
        defer { setup.pool.close() }
        let first = try await Self.run(
            setup.committer, entity: "rp", first: Self.input("rp", key: "k0"),
            then: [(Self.input("rp", key: "k1"), Self.incr), (Self.input("rp", key: "k2"), Self.incr)])
        let ran = Mutex(0)
        let counted: Worker = { snapshot in
            ran.withLock { $0 += 1 }
            return try await Self.incr(snapshot)
        }
        let again = try await Self.run(
            setup.committer, entity: "rp", first: Self.input("rp", key: "k0"),
            then: [(Self.input("rp", key: "k1"), counted), (Self.input("rp", key: "k2"), counted)])
        #expect(again.map(Self.text) == first.map(Self.text))
        #expect(ran.withLock { $0 } == 0)
        #expect(try await setup.store.load(EntityKey(function: "f", entity: "rp")).version == 2)
    }
}
