// How a handler's response reaches its connection: answered on the spot when the handler never waits, through
// suspend and resume when it does, and in the race between the two when it finishes on another thread at once.
// Each way, the client gets the right body and `afterSending` runs exactly once.
import Dispatch
import StatefnTestSupport
import Synchronization
import Testing

@testable import StatefnHTTP

/// Counts `afterSending` calls per request path.
final class SendLog: Sendable {
    private let calls = Mutex<[String: Int]>([:])
    func record(_ path: String) { calls.withLock { $0[path, default: 0] += 1 } }
    var all: [String: Int] { calls.withLock { $0 } }
}

/// A task executor that counts the jobs it is given and runs them on Dispatch's global queue.
final class CountingExecutor: TaskExecutor {
    let jobs = Atomic<Int>(0)
    func enqueue(_ job: consuming ExecutorJob) {
        jobs.add(1, ordering: .relaxed)
        let job = UnownedJob(job)
        DispatchQueue.global().async { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}

/// `/now` answers without waiting; `/hop` waits for another thread that answers at once; `/sleep` waits 5 ms.
func handoffHandler(_ log: SendLog) -> HTTPHandler {
    { request in
        switch request.path {
        case let path where path.hasPrefix("/hop"):
            await withCheckedContinuation { continuation in DispatchQueue.global().async { continuation.resume() } }
        case let path where path.hasPrefix("/sleep"):
            try? await Task.sleep(for: .milliseconds(5))
        default:
            break
        }
        var response = HTTPResponse(status: 200, body: Array(request.path.utf8))
        response.afterSending = { log.record(request.path) }
        return response
    }
}

@Suite(.timeLimit(.minutes(2)))
struct HandoffTests {
    /// All of a run's requests go over one kept-alive connection, as a busy client's would.
    @Test(arguments: ["/now", "/hop", "/sleep"])
    func everyWayAnswersOnceAndRunsAfterSendingOnce(prefix: String) async throws {
        let log = SendLog()
        let count = prefix == "/sleep" ? 100 : 1000
        try await withServer(handler: handoffHandler(log)) { server in
            let port = server.port
            let (bodies, connections) = try await onThread {
                let client = newClient(port)
                let bodies = try (0..<count).map { index in try client.request("GET", "\(prefix)/\(index)").text }
                return (bodies, client.connectionsOpened)
            }
            #expect(bodies == (0..<count).map { "\(prefix)/\($0)" })
            #expect(connections == 1)
        }
        #expect(await settles { log.all.count == count })
        #expect(log.all.values.allSatisfy { $0 == 1 })
    }

    @Test func handlersRunWithTheServersExecutorPreference() async throws {
        let executor = CountingExecutor()
        let log = SendLog()
        let texts = try await withServer(executor: executor, handler: handoffHandler(log)) { server in
            [
                try await fetch(port: server.port, "GET", "/sleep/1").text,
                try await fetch(port: server.port, "GET", "/sleep/2").text,
            ]
        }
        #expect(texts == ["/sleep/1", "/sleep/2"])
        // Each handler went on through the executor after its wait. (Not /hop: a continuation resumed by another
        // thread before the handler has suspended lets it run straight on, through no executor at all.)
        #expect(executor.jobs.load(ordering: .relaxed) >= 2)
    }
}
