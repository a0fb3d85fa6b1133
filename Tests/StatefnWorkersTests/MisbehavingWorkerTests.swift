// Functions that misbehave the ways real ones do, each against a real pool: every one gets the status a client
// should see, the pool keeps serving, and no process of it is left in the process table afterwards.
import Foundation
import StatefnJSON
import Testing

@testable import StatefnWorkers

@Suite struct MisbehavingWorkerTests {
    /// The pool answers a good request after whatever a test did to it.
    func stillServes(_ pool: WorkerPool) async throws {
        let answer = try await pool.invoke(fixture("echo"), request: request("alive"))
        #expect(answer["id"] == "alive")
    }

    @Test func aCrashAtStartUpIs502AndACrashLoopIs503WithRetryAfter() async throws {
        try await withPool { pool in
            let startcrash = fixture("startcrash")
            for index in 0..<CrashPolicy.loopCrashes {
                let code = await failureCode { try await pool.invoke(startcrash, request: request("s\(index)")) }
                #expect(code == .crashed)
            }
            do {
                _ = try await pool.invoke(startcrash, request: request("again"))
                Issue.record("a crash loop must refuse")
            } catch let error as WorkerError {
                #expect(error.code == .unhealthy)
                #expect((error.retryAfterSeconds ?? 0) > 0)
            }
            let status = try #require(await pool.status().first { $0.function == "startcrash" })
            #expect(status.crashes == CrashPolicy.loopCrashes)
            #expect(status.unhealthyForMs != nil)
            try await stillServes(pool)
        }
        #expect(await leavesNoStrays("startcrash"))
    }

    @Test func aCrashMidRequestIs502AndTheWorkerIsReplaced() async throws {
        try await withPool { pool in
            let crash = fixture("crash")
            #expect(await failureCode { try await pool.invoke(crash, request: request("c1")) } == .crashed)
            #expect(await failureCode { try await pool.invoke(crash, request: request("c2")) } == .crashed)
            try await stillServes(pool)
        }
        #expect(await leavesNoStrays("crash"))
    }

    @Test func garbageIs502() async throws {
        try await withPool { pool in
            #expect(
                await failureCode { try await pool.invoke(fixture("garbage"), request: request("g")) }
                    == .invalidResponse)
            try await stillServes(pool)
        }
        #expect(await leavesNoStrays("garbage"))
    }

    @Test func aTwentyMebibyteLineIs502AndTheWorkerIsReplaced() async throws {
        try await withPool { pool in
            let hugeline = fixture("hugeline")
            #expect(hugeline.manifest.maxResponseBytes == 8 << 20)
            for index in 0..<2 {
                #expect(
                    await failureCode { try await pool.invoke(hugeline, request: request("h\(index)")) }
                        == .invalidResponse)
            }
            let status = try #require(await pool.status().first { $0.function == "hugeline" })
            #expect(status.recycles == 2)
            #expect(status.crashes == 0)
            try await stillServes(pool)
        }
        #expect(await leavesNoStrays("hugeline"))
    }

    @Test func maxResponseBytesIsTheManifestsCap() async throws {
        try await withPool { pool in
            let small = fixture("echo") { $0.maxResponseBytes = 4096 }
            _ = try await pool.invoke(small, request: request("fits", payload: ["bytes": 1000]))
            let code = await failureCode {
                try await pool.invoke(small, request: request("over", payload: ["bytes": 5000]))
            }
            #expect(code == .invalidResponse)
        }
    }

    @Test func a100MegabyteStderrFloodNeitherBlocksNorReachesTheAnswer() async throws {
        let recorder = LogRecorder()
        try await withPool(recorder) { pool in
            let flood = fixture("flood")
            let answer = try await pool.invoke(flood, request: request("loud"))
            #expect(answer == ["id": "loud", "reply": "flooded"])
            // The same worker, its stderr drained, answers the next request at once.
            let quiet = try await pool.invoke(flood, request: request("quiet", payload: ["quiet": true]))
            #expect(quiet == ["id": "quiet", "reply": "flooded"])
            #expect(await pool.status().first { $0.function == "flood" }?.coldStarts == 1)
            let lines = recorder.all.filter {
                $0.metadata["function"] == "flood" && $0.message.hasSuffix("…[truncated]")
            }
            #expect(lines.count == 100)
            #expect(lines.allSatisfy { $0.message.utf8.count <= WorkerProcess.stderrLineLimit + 20 })
            try await stillServes(pool)
        }
        #expect(await leavesNoStrays("flood"))
    }

    @Test func aWorkerThatIgnoresSIGTERMIsKilledAfterTheGrace() async throws {
        try await withPool { pool in
            let stubborn = fixture("stubborn")
            let error = try #require(await failure { try await pool.invoke(stubborn, request: request("t")) })
            #expect(error.code == .timedOut)
            let group = try #require(terminatedGroup(error))
            #expect(await eventually { !groupExists(group) })
            #expect(await pool.status().first { $0.function == "stubborn" }?.timeouts == 1)
            try await stillServes(pool)
        }
        #expect(await leavesNoStrays("stubborn"))
    }

    @Test func aForkedGrandchildHoldingThePipesDiesWithItsGroup() async throws {
        try await withPool { pool in
            let answer = try await pool.invoke(fixture("forkgrandchild"), request: request("fg"))
            let grandchild = Int32(try #require(answer["reply"]?["grandchild"]?.integerValue))
            #expect(await eventually { kill(grandchild, 0) != 0 && errno == ESRCH })
            #expect(await eventually { await pool.status().allSatisfy { $0.pids.isEmpty } })
        }
        #expect(await leavesNoStrays("forkgrandchild"))
    }

    @Test func allocatingPastMemoryMBIs502Twice() async throws {
        try await withPool { pool in
            let hog = fixture("hog")
            #expect(hog.manifest.memoryMB == 64)
            // RLIMIT_DATA refuses the heap, or the worker's memory cgroup does...
            #expect(
                await failureCode { try await pool.invoke(hog, request: request("h", payload: ["how": "heap"])) }
                    == .crashed)
            // ...and the RSS watch, or the cgroup, kills what RLIMIT_DATA does not count.
            do {
                _ = try await pool.invoke(hog, request: request("s", payload: ["how": "shared"]))
                Issue.record("a worker over memory_mb must not answer")
            } catch let error as WorkerError {
                #expect(error.code == .crashed)
                #expect(error.detail.contains("memory_mb"))
            }
            let small = try await pool.invoke(hog, request: request("ok"))
            #expect(small["id"] == "ok")
            #expect((await pool.status().first { $0.function == "hog" }?.recycles ?? 0) >= 1)
        }
        #expect(await leavesNoStrays("hog"))
    }

    /// Where a memory cgroup is writable (as root on this kind of machine), each warm worker gets one of its own,
    /// limited to `memory_mb`, and the kernel's OOM killer enforces it; elsewhere RLIMIT_DATA does. Either way the
    /// test checks what the worker runs under, from /proc and the cgroup files, and that nothing is left afterwards.
    @Test func aWarmWorkerRunsUnderMemoryMBInItsOwnCgroupWhereOneIsWritable() async throws {
        let recorder = LogRecorder()
        let expected = MemoryCgroups.locate(
            mountInfo: try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8),
            ownCgroups: try String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8),
            subtreeControl: { try? String(contentsOfFile: $0 + "/cgroup.subtree_control", encoding: .utf8) })
        var workerCgroup: String?
        try await withPool(recorder) { pool in
            let hog = fixture("hog")
            let first = try await pool.invoke(hog, request: request("a"))
            let pid = try #require(first["reply"]?["pid"]?.integerValue)
            let limits = try String(contentsOfFile: "/proc/\(pid)/limits", encoding: .utf8)
            let dataLimit = limits.split(separator: "\n").first { $0.hasPrefix("Max data size") }.map(String.init) ?? ""
            guard let (version, parent) = expected else {
                #expect(dataLimit.contains("\(64 << 20)"), "no cgroup here, so RLIMIT_DATA: \(dataLimit)")
                return
            }
            #expect(dataLimit.contains("unlimited"), "a worker in a memory cgroup gets no RLIMIT_DATA: \(dataLimit)")
            let directory = parent + "/statefn-\(getpid())-"
            let cgroup = try #require(pool.memoryCgroups).directory + "/\(pid)"
            #expect(cgroup.hasPrefix(directory))
            let limitFile = version == .v1 ? "/memory.limit_in_bytes" : "/memory.max"
            #expect(try String(contentsOfFile: cgroup + limitFile, encoding: .utf8) == "\(64 << 20)\n")
            #expect(try String(contentsOfFile: cgroup + "/cgroup.procs", encoding: .utf8) == "\(pid)\n")
            workerCgroup = cgroup

            // Over the limit, the kernel kills the worker; the pool says why, and replaces it.
            for how in ["heap", "shared"] {
                do {
                    _ = try await pool.invoke(hog, request: request(how, payload: ["how": .string(how)]))
                    Issue.record("a worker over memory_mb must not answer")
                } catch let error as WorkerError {
                    #expect(error.code == .crashed)
                    #expect(error.detail.contains("memory_mb"), "\(error.detail)")
                }
            }
            #expect(!recorder.messages(containing: "OOM killer").isEmpty)
            #expect(try await pool.invoke(hog, request: request("b"))["id"] == "b")
            #expect(!FileManager.default.fileExists(atPath: cgroup), "a reaped worker's cgroup is removed")
        }
        if let workerCgroup {
            let directory = String(workerCgroup[..<workerCgroup.lastIndex(of: "/")!])
            #expect(!FileManager.default.fileExists(atPath: directory), "a stopped pool removes its directory")
        }
        #expect(await leavesNoStrays("hog"))
    }

    @Test func locatesTheMemoryCgroupInBothHierarchies() {
        let hybrid = """
            35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
            """
        let own = "4:memory:/process_api/abc\n1:cpu:/\n0::/\n"
        // cgroup v2 without the memory controller for children: v1's memory hierarchy.
        let v1 = MemoryCgroups.locate(mountInfo: hybrid, ownCgroups: own, subtreeControl: { _ in "hugetlb\n" })
        #expect(v1?.version == .v1)
        #expect(v1?.parent == "/sys/fs/cgroup/memory/process_api/abc")
        // With memory delegated in v2, v2 wins.
        let v2 = MemoryCgroups.locate(mountInfo: hybrid, ownCgroups: own, subtreeControl: { _ in "cpu memory\n" })
        #expect(v2?.version == .v2)
        #expect(v2?.parent == "/sys/fs/cgroup/unified")
        // A container that sees only its own part of the hierarchy (the mount's root is its cgroup).
        let container = "50 40 0:30 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
        let inside = MemoryCgroups.locate(
            mountInfo: container, ownCgroups: "0::/kubepods/pod1/app\n", subtreeControl: { _ in "memory pids" })
        #expect(inside?.parent == "/sys/fs/cgroup/app")
        // No memory controller anywhere.
        #expect(MemoryCgroups.locate(mountInfo: "", ownCgroups: own, subtreeControl: { _ in nil }) == nil)
    }

    @Test func reservedAddressSpaceDoesNotCountAgainstMemoryMB() async throws {
        try await withPool { pool in
            let reserve = fixture("reserve")
            #expect(reserve.manifest.memoryMB == 512)
            let answer = try await pool.invoke(reserve, request: request("r"))
            #expect(answer["reply"]?["reserved_gib"] == 8)
        }
        #expect(await leavesNoStrays("reserve"))
    }

    // scripts/install-deps installs Node.js when it is missing, so this runs everywhere the tests run.
    @Test func aNodeWorkerRunsWithTheDefaultMemoryMB() async throws {
        try await withPool { pool in
            let node = fixture("nodeecho")
            #expect(node.manifest.memoryMB == 512)
            let answer = try await pool.invoke(node, request: request("n", payload: ["x": 1]))
            #expect(answer["reply"]?["payload"] == ["x": 1])
        }
        #expect(await leavesNoStrays("nodeecho"))
    }

    @Test func aWarmWorkerThatExitsAfterEveryRequestStillAnswersEveryRequest() async throws {
        try await withPool { pool in
            let oneshot = fixture("oneshot")
            var pids: Set<Int64> = []
            for index in 0..<15 {
                let answer = try await pool.invoke(oneshot, request: request("o\(index)"))
                pids.insert(try #require(answer["reply"]?["pid"]?.integerValue))
            }
            #expect(pids.count == 15)
            let status = try #require(await pool.status().first { $0.function == "oneshot" })
            #expect(status.crashes == 0)
        }
        #expect(await leavesNoStrays("oneshot"))
    }

    @Test func aWorkerThatNeverSaysReadyIsKilledAtItsInitTimeout() async throws {
        try await withPool { pool in
            let silent = fixture("silent")
            #expect(silent.manifest.initTimeoutMs == 500)
            do {
                _ = try await pool.invoke(silent, request: request("i"))
                Issue.record("a worker that never got ready must not answer")
            } catch let error as WorkerError {
                #expect(error.code == .crashed)
                #expect(error.detail.contains("init_timeout_ms"))
            }
            // With the handshake required, a worker that does announce itself serves.
            let echo = fixture("echo") { $0.initTimeoutMs = 10_000 }
            #expect(try await pool.invoke(echo, request: request("e"))["id"] == "e")
        }
        #expect(await leavesNoStrays("silent"))
    }
}
