// A request task that prefers the pool's AnswerExecutor goes on, after its worker answers, on the pool's I/O thread,
// unless the answer is large; and it still gets every answer, in warm and fork mode and through a shutdown.
import Foundation
import Glibc
import StatefnJSON
import Testing

@testable import StatefnWorkers

@Suite(.timeLimit(.minutes(2))) struct AnswerExecutorTests {
    /// Where a task went on after its answer.
    private struct Resumption {
        var answer: JSONValue
        var onLoopThread: Bool
        /// The thread it went on is the one it asked from: it may never have suspended (a task resumed before it
        /// suspends just goes on where it is), so where it went on says nothing.
        var perhapsNeverSuspended: Bool
    }

    /// Invokes the `gated` fixture in a task that prefers the answer executor, and lets the worker answer only once
    /// the request has reached it, so the task is waiting for the answer by then (unless its thread stalled between
    /// writing the request and suspending, which `perhapsNeverSuspended` tells).
    private func invokeGated(_ pool: WorkerPool, id: String, bytes: Int? = nil) async throws -> Resumption {
        let directory = TemporaryDirectory()
        let gate = directory.path + "/gate"
        var payload: JSONObject = ["gate": .string(gate)]
        if let bytes { payload["bytes"] = .integer(Int64(bytes)) }
        let body = request(id, payload: .object(payload))
        let task = Task(executorPreference: pool.answerExecutor) {
            let before = pthread_self()
            let answer = try await pool.invoke(fixture("gated"), request: body)
            return Resumption(
                answer: answer, onLoopThread: pool.loop.inLoopThread, perhapsNeverSuspended: pthread_self() == before)
        }
        let arrived = await eventually(every: .milliseconds(1)) {
            FileManager.default.fileExists(atPath: gate + ".arrived")
        }
        #expect(arrived, "request \(id) never reached the worker")
        #expect(FileManager.default.createFile(atPath: gate, contents: nil))
        let result = try await task.value
        #expect(result.answer["id"] == .string(id))
        #expect(result.answer["reply"]?["opened"] == true, "the worker answered without the gate")
        return result
    }

    @Test func aSmallAnswerGoesOnOnTheIOThread() async throws {
        try await withPool { pool in
            for index in 0..<20 {
                // A task that went on elsewhere but may not have suspended says nothing: ask again (a few times).
                var attempt = 0
                var resumed = try await invokeGated(pool, id: "s\(index)")
                while !resumed.onLoopThread && resumed.perhapsNeverSuspended && attempt < 5 {
                    attempt += 1
                    resumed = try await invokeGated(pool, id: "s\(index)-\(attempt)")
                }
                #expect(resumed.onLoopThread, "request s\(index) went on off the I/O thread")
            }
        }
    }

    @Test func aLargeAnswerGoesOnInSwiftsPool() async throws {
        try await withPool { pool in
            let resumed = try await invokeGated(pool, id: "big", bytes: WorkerPool.inlineAnswerBytes)
            #expect(resumed.answer["reply"]?["filler"]?.stringValue?.count == WorkerPool.inlineAnswerBytes)
            #expect(!resumed.onLoopThread)
        }
    }

    @Test func failuresAndForkRunsResumeToo() async throws {
        try await withPool { pool in
            let fork = try await Task(executorPreference: pool.answerExecutor) {
                try await pool.invoke(fixture("forkecho"), request: request("f1"))
            }.value
            #expect(fork["id"] == .string("f1"))
            let refused = await Task(executorPreference: pool.answerExecutor) {
                await failureCode { try await pool.invoke(fixture("garbage"), request: request("g1")) }
            }.value
            #expect(refused == .invalidResponse)
        }
    }

    private enum Outcome: Sendable, Equatable {
        case answered
        case wrongAnswer(JSONValue)
        case refused(WorkerError.Code)
    }

    @Test func manyConcurrentTasksAllFinishAcrossAShutdown() async throws {
        let pool = WorkerPool(logger: LogRecorder().logger)
        let gated = fixture("gated") { $0.maxWorkers = 2 }
        let directory = TemporaryDirectory()
        let open = directory.path + "/open"
        #expect(FileManager.default.createFile(atPath: open, contents: nil))
        let closed = directory.path + "/closed"  // never opened: its requests wait in the worker until the shutdown
        let answered = Counter()
        let outcomes = await withTaskGroup(of: Outcome.self) { group in
            func invoke(_ index: Int, gate: String) {
                group.addTask(executorPreference: pool.answerExecutor) {
                    do throws(WorkerError) {
                        let answer = try await pool.invoke(
                            gated, request: request("m\(index)", payload: ["gate": .string(gate)]))
                        guard answer["id"] == .string("m\(index)") else { return .wrongAnswer(answer) }
                        answered.increment()
                        return .answered
                    } catch {
                        return .refused(error.code)
                    }
                }
            }
            // Ten that are answered, then 190 that are not before the shutdown: two in the workers, the rest waiting.
            for index in 0..<10 { invoke(index, gate: open) }
            #expect(await eventually { answered.value == 10 }, "only \(answered.value) of 10 answered")
            for index in 10..<200 { invoke(index, gate: closed) }
            let underWay = await eventually {
                let status = await pool.status().first
                return status?.busy == 2 && status?.queued == 188
            }
            let status = await pool.status().first
            #expect(underWay, "busy \(status?.busy ?? -1), queued \(status?.queued ?? -1)")
            await pool.shutdown()
            return await group.reduce(into: [Outcome]()) { $0.append($1) }
        }
        #expect(outcomes.count == 200)
        #expect(outcomes.filter { $0 == .answered }.count == 10)
        let refused = outcomes.filter { if case .refused = $0 { true } else { false } }
        #expect(refused.count == 190, "\(outcomes.filter { if case .wrongAnswer = $0 { true } else { false } })")
        #expect(refused.allSatisfy { $0 == .refused(.shuttingDown) }, "\(Set(refused.map { "\($0)" }))")
    }
}
