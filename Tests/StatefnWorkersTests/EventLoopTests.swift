// Descriptors another thread puts in the event loop (`watchFromAnyThread`) reach their handlers, whether or not
// the loop was woken for them; and the threads that spawn workers do not block SIGCHLD.
import Foundation
import Glibc
import Synchronization
import Testing

@testable import StatefnWorkers

@Suite(.timeLimit(.minutes(2))) struct EventLoopTests {
    final class Received: Sendable {
        let bytes = Mutex<[UInt8]>([])
        var text: String { String(decoding: bytes.withLock { $0 }, as: UTF8.self) }
    }

    /// A pipe whose read end is watched from this (non-loop) thread, with a handler that appends what it reads to
    /// `read`; returns the write end.
    private func watchedPipe(on loop: EventLoop, wake: Bool, read: Received) -> Int32 {
        var fds: [Int32] = [-1, -1]
        #expect(pipe(&fds) == 0)
        _ = fcntl(fds[0], F_SETFL, O_NONBLOCK)
        let readEnd = fds[0]
        loop.watchFromAnyThread([(readEnd, EventLoop.readable)], wake: wake) { watches in
            loop.install(watches[0]) { _ in
                var buffer = [UInt8](repeating: 0, count: 64)
                let count = buffer.withUnsafeMutableBytes { Glibc.read(readEnd, $0.baseAddress, $0.count) }
                if count > 0 {
                    read.bytes.withLock { $0 += buffer.prefix(count) }
                } else {
                    loop.unwatch(watches[0])
                    close(readEnd)
                }
            }
        }
        return fds[1]
    }

    @Test(arguments: [false, true])
    func anEventOnADescriptorWatchedFromAnotherThreadReachesItsHandler(wake: Bool) async {
        let loop = EventLoop()
        defer { loop.stop() }
        let read = Received()
        for round in 0..<50 {
            let writeEnd = watchedPipe(on: loop, wake: wake, read: read)
            let bytes: [UInt8] = Array("r\(round);".utf8)
            _ = bytes.withUnsafeBytes { write(writeEnd, $0.baseAddress, $0.count) }
            close(writeEnd)
        }
        let expected = (0..<50).map { "r\($0);" }.joined()
        #expect(await eventually { read.text.count == expected.count })
        #expect(read.text.split(separator: ";").sorted() == expected.split(separator: ";").sorted())
    }

    @Test func aQuietWatchIsAdoptedByTheNextTimerWithoutAnEvent() async {
        let loop = EventLoop()
        defer { loop.stop() }
        let adopted = Atomic<Bool>(false)
        var fds: [Int32] = [-1, -1]
        #expect(pipe(&fds) == 0)
        defer {
            close(fds[0])
            close(fds[1])
        }
        // A timer on the loop, as the worker pool's tick is: the loop wakes for it and brings the watch in.
        loop.execute { _ = loop.schedule(after: 50) {} }
        loop.watchFromAnyThread([(fds[0], EventLoop.readable)], wake: false) { watches in
            loop.install(watches[0]) { _ in }
            adopted.store(true, ordering: .relaxed)
            loop.unwatch(watches[0])
        }
        #expect(await eventually { adopted.load(ordering: .relaxed) })
    }

    @Test func spawnThreadsLeaveSIGCHLDUnblocked() async throws {
        // A worker pool spawns one process, so the shared spawn threads exist.
        try await withPool { pool in
            _ = try await pool.invoke(fixture("forkecho"), request: request("c1"))
        }
        func spawnThreads() -> [String] {
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
            return tasks.filter { task in
                (try? String(contentsOfFile: "/proc/self/task/\(task)/comm", encoding: .utf8))?
                    .hasPrefix("statefn-spawn") == true
            }
        }
        func spawnThreadCount() -> Int { spawnThreads().count }
        // Named as each starts; the mask is theirs from birth.
        #expect(await eventually { spawnThreadCount() == 4 })
        for task in spawnThreads() {
            let status = try String(contentsOfFile: "/proc/self/task/\(task)/status", encoding: .utf8)
            let line = try #require(status.split(separator: "\n").first { $0.hasPrefix("SigBlk:") })
            let blocked = try #require(UInt64(line.split(separator: "\t").last ?? "", radix: 16))
            #expect(blocked & (1 << (UInt64(SIGCHLD) - 1)) == 0, "thread \(task) blocks SIGCHLD")
            #expect(blocked & (1 << (UInt64(SIGTERM) - 1)) != 0, "thread \(task) takes SIGTERM")
        }
    }
}
