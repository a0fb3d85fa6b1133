// The built `statefn` binary, run as a user would run it: a real process on a real port. Its JSON log lines are
// collected so tests can wait for "statefn listening" and read the bound port. Spawned with posix_spawn and reaped
// with waitpid, not Foundation's Process, whose pipes and reaping misbehave under parallel tests.
import CLinux
import Foundation

public final class GatewayProcess: @unchecked Sendable {
    // `lock` guards `exitStatus`; `pid` and `port` are set once in init.
    private let lock = NSLock()
    private var exitStatus: Int32?
    private let logBuffer = LogBuffer()
    public let pid: pid_t
    public private(set) var port = 0

    /// The repository root, found from this file's path.
    public static let repositoryRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    /// The binary `swift build` made for this configuration.
    public static var binaryPath: String {
        if let path = ProcessInfo.processInfo.environment["STATEFN_TEST_BINARY"] { return path }
        return repositoryRoot + "/.build/debug/statefn"
    }

    /// Starts `statefn serve` on a free port and waits until it listens. The environment holds only PATH, HOME and
    /// `environment`, so nothing from the test process leaks in. Authentication is off (`--insecure-no-auth`)
    /// unless `authenticated` is true, so tests about other things need no credentials.
    public init(
        arguments: [String] = [], environment: [String: String] = [:], authenticated: Bool = false,
        startTimeout: Double = 120
    ) throws {
        guard FileManager.default.isExecutableFile(atPath: Self.binaryPath) else {
            throw TestHTTPError(description: "\(Self.binaryPath) is missing: run `swift build` first")
        }
        var fds: [Int32] = [-1, -1]
        guard clinux_pipe2(&fds, O_CLOEXEC) == 0 else { throw TestHTTPError(description: "pipe2: errno \(errno)") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 2)
        clinux_spawn_addchdir(&actions, Self.repositoryRoot)
        clinux_spawn_addclosefrom(&actions, 3)

        var env = ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", "HOME": NSTemporaryDirectory()]
        env.merge(environment) { $1 }
        let serve = [Self.binaryPath, "serve", "--listen", "127.0.0.1:0"] + (authenticated ? [] : ["--insecure-no-auth"])
        let argv = (serve + arguments).map { strdup($0) } + [nil]
        let envp = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var child = pid_t()
        let spawned = posix_spawn(&child, Self.binaryPath, &actions, nil, argv, envp)
        close(fds[1])
        guard spawned == 0 else {
            close(fds[0])
            throw TestHTTPError(description: "cannot start \(Self.binaryPath): error \(spawned)")
        }
        pid = child
        let (readEnd, buffer) = (fds[0], logBuffer)
        // The thread holds only the buffer, so dropping this object still kills the process (deinit).
        Thread.detachNewThread { buffer.collect(from: readEnd) }

        let deadline = Date().addingTimeInterval(startTimeout)
        while Date() < deadline {
            if let line = logs.first(where: { $0.contains("\"statefn listening\"") }),
                let range = line.range(of: #"127\.0\.0\.1:(\d+)"#, options: .regularExpression)
            {
                port = Int(line[range].split(separator: ":").last!)!
                return
            }
            guard isRunning else {
                throw TestHTTPError(description: "statefn exited at start-up:\n\(logs.joined(separator: "\n"))")
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        stop(signal: SIGKILL)
        throw TestHTTPError(description: "statefn did not start listening:\n\(logs.joined(separator: "\n"))")
    }

    deinit {
        if isRunning { stop(signal: SIGKILL) }
    }

    public var logs: [String] { logBuffer.lines }

    public func client() -> TestHTTPClient { TestHTTPClient(port: port) }

    /// Whether the process is still running; reaps it once it has exited.
    public var isRunning: Bool {
        lock.withLock {
            guard exitStatus == nil else { return false }
            var status: Int32 = 0
            guard waitpid(pid, &status, WNOHANG) == pid else { return true }
            exitStatus = Self.decode(status)
            return false
        }
    }

    /// Sends `signal`, waits for the process to exit, and returns its exit status (128 + signal if killed; -1 if
    /// it had to be killed after `timeout`).
    @discardableResult
    public func stop(signal: Int32 = SIGTERM, timeout: Double = 60) -> Int32 {
        if isRunning { kill(pid, signal) }
        let deadline = Date().addingTimeInterval(timeout)
        while isRunning, Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
        guard !isRunning else {
            kill(pid, SIGKILL)
            while isRunning { Thread.sleep(forTimeInterval: 0.02) }
            return -1
        }
        return lock.withLock { exitStatus ?? -1 }
    }

    /// WIFEXITED/WEXITSTATUS are macros Swift cannot see.
    private static func decode(_ status: Int32) -> Int32 {
        status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }
}

/// Lines the process wrote on stderr.
private final class LogBuffer: @unchecked Sendable {
    // `lock` guards both arrays.
    private let lock = NSLock()
    private var complete: [String] = []
    private var partial: [UInt8] = []

    var lines: [String] { lock.withLock { complete } }

    /// Reads until end of file, on the calling (dedicated) thread.
    func collect(from fd: Int32) {
        defer { close(fd) }
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &chunk, chunk.count)
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { return }
            lock.withLock {
                partial.append(contentsOf: chunk[0..<n])
                while let newline = partial.firstIndex(of: UInt8(ascii: "\n")) {
                    complete.append(String(decoding: partial[..<newline], as: UTF8.self))
                    partial.removeSubrange(...newline)
                }
            }
        }
    }
}
