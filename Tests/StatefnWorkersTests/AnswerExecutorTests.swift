// A request task that prefers the pool's AnswerExecutor goes on, after its worker answers, on the pool's I/O thread,
// unless the answer is large; and it still gets every answer, in warm and fork mode and through a shutdown.
import StatefnJSON
import Testing

@testable import StatefnWorkers

@Suite struct AnswerExecutorTests {
    /// Invokes `function` in a task that prefers the answer executor; returns the answer and whether the task went on
    /// on the I/O thread.
    private func invokePreferring(_ pool: WorkerPool, _ function: FunctionDefinition, _ body: JSONValue) async throws
        -> (answer: JSONValue, onLoopThread: Bool)
    {
        try await Task(executorPreference: pool.answerExecutor) {
            let answer = try await pool.invoke(function, request: body)
            return (answer, pool.loop.inLoopThread)
        }.value
    }

    @Test func aSmallAnswerGoesOnOnTheIOThread() async throws {
        try await withPool { pool in
            let echo = fixture("echo")
            // The worker waits a little, so that the task has surely suspended before the answer comes (a task
            // resumed before it suspends just goes on where it is).
            for index in 0..<20 {
                let (answer, onLoopThread) = try await invokePreferring(
                    pool, echo, request("s\(index)", payload: ["sleep_ms": 2]))
                #expect(answer["id"] == .string("s\(index)"))
                #expect(onLoopThread)
            }
        }
    }

    @Test func aLargeAnswerGoesOnInSwiftsPool() async throws {
        try await withPool { pool in
            let (answer, onLoopThread) = try await invokePreferring(
                pool, fixture("echo"), request("big", payload: ["bytes": .integer(Int64(WorkerPool.inlineAnswerBytes)), "sleep_ms": 2]))
            #expect(answer["reply"]?["filler"]?.stringValue?.count == WorkerPool.inlineAnswerBytes)
            #expect(!onLoopThread)
        }
    }

    @Test func failuresAndForkRunsResumeToo() async throws {
        try await withPool { pool in
            let (fork, _) = try await invokePreferring(pool, fixture("forkecho"), request("f1"))
            #expect(fork["id"] == .string("f1"))
            await #expect(throws: WorkerError.self) {
                _ = try await invokePreferring(pool, fixture("garbage"), request("g1"))
            }
        }
    }

    @Test func manyConcurrentTasksAllFinishAcrossAShutdown() async throws {
        let pool = WorkerPool(logger: LogRecorder().logger)
        let echo = fixture("echo") { $0.maxWorkers = 2 }
        let finished = await withTaskGroup(of: Bool.self) { group in
            for index in 0..<200 {
                group.addTask(executorPreference: pool.answerExecutor) {
                    // Answers or refusals both count: what matters is that no task is left waiting.
                    _ = try? await pool.invoke(echo, request: request("m\(index)"))
                    return true
                }
            }
            try? await Task.sleep(for: .milliseconds(50))
            await pool.shutdown()
            return await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        #expect(finished == 200)
    }
}
