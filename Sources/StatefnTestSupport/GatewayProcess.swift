// The built `statefn` binary, run as a user would run it: a real process on a real port. Its JSON log lines are
// collected so tests can wait for "statefn listening" and read the bound port. Spawned with posix_spawn and reaped
// with waitpid, not Foundation's Process, whose pipes and reaping misbehave under parallel tests.
import CLinux
import Foundation
import Synchronization

public final class GatewayProcess: @unchecked Sendable {
    /// How the gateway authenticates its callers.
    public enum Authentication: Sendable {
        /// On, with a development key (`--dev-key`, scope `admin:*`) that `client()` sends: the default, so that
        /// tests run the gateway as it is deployed.
        case devKey
        /// On, with no key made for the test: the test makes its own (`statefn keys create`).
        case keysOnly
        /// `--insecure-no-auth`: only for the tests that are about it.
        case off
    }

    // `lock` guards `exitStatus`; `pid`, `port` and `devKey` are set once in init.
    private let lock = NSLock()
    private var exitStatus: Int32?
    private let logBuffer = LogBuffer()
    public let pid: pid_t
    public private(set) var port = 0
    /// The development key, with `.devKey`.
    public private(set) var devKey: String?
    /// A data directory made for this process (removed with it), when the test gave none.
    private var ownDataDirectory: String?

    /// The repository root, found from this file's path.
    public static let repositoryRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    private static let reachableCopies = Mutex<[String: String]>([:])

    /// `directory`, or, when the tests run as root from a checkout other accounts cannot pass through (under
    /// /root, say), a copy of it that they can: as root, statefn runs workers as an unprivileged account, and
    /// refuses to start when that account cannot reach the functions directory. One copy per directory per run.
    public static func reachable(_ directory: String) -> String {
        guard getuid() == 0, !othersCanReach(directory) else { return directory }
        return reachableCopies.withLock { copies in
            if let copy = copies[directory] { return copy }
            let copy = TestDatabase.makeTemporaryDirectory() + "/functions"
            _ = try? runToEnd("/bin/cp", ["-a", directory, copy])
            chmod(copy, 0o755)
            copies[directory] = copy
            return copy
        }
    }

    /// Whether every directory on the way to `path` lets other accounts through (o+x).
    static func othersCanReach(_ path: String) -> Bool {
        var prefix = ""
        return !path.split(separator: "/").contains { component in
            prefix += "/" + component
            var info = stat()
            return stat(prefix, &info) != 0 || info.st_mode & S_IXOTH == 0
        }
    }

    /// The binary installed as `<prefix>/bin/statefn`, beside `<prefix>/share/statefn/{migrations,docs}`, where an
    /// account that cannot reach the checkout can run it (`runAs`); the checkout itself when it can.
    private static let installedForOthers: (binary: String, directory: String) = {
        guard !othersCanReach(binaryPath) || !othersCanReach(repositoryRoot) else { return (binaryPath, repositoryRoot) }
        let prefix = TestDatabase.makeTemporaryDirectory()
        let share = prefix + "/share/statefn"
        _ = try? runToEnd("/bin/mkdir", ["-p", prefix + "/bin", share])
        _ = try? runToEnd("/bin/cp", [binaryPath, prefix + "/bin/statefn"])
        _ = try? runToEnd("/bin/cp", ["-a", repositoryRoot + "/migrations", repositoryRoot + "/docs", share])
        _ = try? runToEnd("/bin/chmod", ["-R", "a+rX", prefix])
        return (prefix + "/bin/statefn", prefix)
    }()

    /// The binary of the configuration under test: the `statefn` that SwiftPM built beside this test bundle
    /// (`.build/<triple>/debug` or `release`), or `STATEFN_TEST_BINARY`.
    public static var binaryPath: String {
        if let path = ProcessInfo.processInfo.environment["STATEFN_TEST_BINARY"] { return path }
        let bundle = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: bundle).deletingLastPathComponent().appendingPathComponent("statefn").path
    }

    /// Starts `statefn serve` on a free port and waits until it listens. The environment holds only PATH, HOME and
    /// `environment`, so nothing from the test process leaks in. Authentication is on: by default with a
    /// development key that `client()` sends (see `Authentication`).
    public init(
        arguments: [String] = [], environment: [String: String] = [:], authentication: Authentication = .devKey,
        startTimeout: Double = 120, runAs account: (uid: uid_t, gid: gid_t)? = nil
    ) throws {
        guard FileManager.default.isExecutableFile(atPath: Self.binaryPath) else {
            throw TestHTTPError(description: "\(Self.binaryPath) is missing: run `swift build` first")
        }
        var arguments = arguments
        if let flag = arguments.firstIndex(of: "--functions"), arguments.index(after: flag) < arguments.endIndex {
            arguments[flag + 1] = Self.reachable(arguments[flag + 1])
        }
        var dataDirectory = arguments.firstIndex(of: "--data-dir").flatMap {
            arguments.index(after: $0) < arguments.endIndex ? arguments[arguments.index(after: $0)] : nil
        }
        if authentication == .devKey {
            if dataDirectory == nil {
                let made = TestDatabase.makeTemporaryDirectory()
                ownDataDirectory = made
                dataDirectory = made
                arguments += ["--data-dir", made]
            }
            arguments.append("--dev-key")
        }
        var fds: [Int32] = [-1, -1]
        guard clinux_pipe2(&fds, O_CLOEXEC) == 0 else { throw TestHTTPError(description: "pipe2: errno \(errno)") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 2)
        let (binary, directory) = account == nil ? (Self.binaryPath, Self.repositoryRoot) : Self.installedForOthers
        clinux_spawn_addchdir(&actions, directory)
        clinux_spawn_addclosefrom(&actions, 3)

        var env = ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", "HOME": NSTemporaryDirectory()]
        env.merge(environment) { $1 }
        let serve = [binary, "serve", "--listen", "127.0.0.1:0"] + (authentication == .off ? ["--insecure-no-auth"] : [])
        // setpriv execs statefn in its own place, so the pid is the gateway's.
        let setpriv = account.map { ["/usr/bin/setpriv", "--reuid=\($0.uid)", "--regid=\($0.gid)", "--clear-groups", "--"] }
        let argv = ((setpriv ?? []) + serve + arguments).map { strdup($0) } + [nil]
        let envp = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var child = pid_t()
        let spawned = posix_spawn(&child, setpriv?[0] ?? binary, &actions, nil, argv, envp)
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
            if let line = logs.first(where: { $0.contains("statefn listening") }),
                let range = line.range(of: #"127\.0\.0\.1:(\d+)"#, options: .regularExpression)
            {
                port = Int(line[range].split(separator: ":").last!)!
                if authentication == .devKey, let dataDirectory {
                    let file = (dataDirectory.hasPrefix("/") ? "" : Self.repositoryRoot + "/") + dataDirectory + "/dev-key"
                    guard let key = try? String(contentsOfFile: file, encoding: .utf8) else {
                        stop(signal: SIGKILL)
                        throw TestHTTPError(description: "statefn --dev-key left no key in \(file)")
                    }
                    devKey = key.trimmingCharacters(in: .whitespacesAndNewlines)
                }
                return
            }
            guard isRunning else {
                // Its last lines may still be in the pipe: read to the end before saying what it said.
                logBuffer.waitForEnd(seconds: 5)
                throw TestHTTPError(description: "statefn exited at start-up:\n\(logs.joined(separator: "\n"))")
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        stop(signal: SIGKILL)
        throw TestHTTPError(description: "statefn did not start listening:\n\(logs.joined(separator: "\n"))")
    }

    deinit {
        if isRunning { stop(signal: SIGKILL) }
        if let ownDataDirectory { try? FileManager.default.removeItem(atPath: ownDataDirectory) }
    }

    public var logs: [String] { logBuffer.lines }

    /// `Authorization: Bearer <dev key>` with `.devKey`; empty otherwise.
    public var authorization: [String: String] { devKey.map { ["Authorization": "Bearer " + $0] } ?? [:] }

    /// A client on a connection of its own, which sends the development key (if any) with every request.
    public func client() -> TestHTTPClient { TestHTTPClient(port: port, defaultHeaders: authorization) }

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

    private static func decode(_ status: Int32) -> Int32 { clinux_wait_shell_status(status) }
}

/// Lines the process wrote on stderr.
private final class LogBuffer: @unchecked Sendable {
    // `lock` guards both arrays.
    private let lock = NSLock()
    private var complete: [String] = []
    private var partial: [UInt8] = []
    private let ended = DispatchSemaphore(value: 0)

    var lines: [String] { lock.withLock { complete } }

    /// Waits until the writer's end of the pipe is closed (the process and its children are gone).
    func waitForEnd(seconds: Double) {
        if ended.wait(timeout: .now() + seconds) == .success { ended.signal() }
    }

    /// Reads until end of file, on the calling (dedicated) thread.
    func collect(from fd: Int32) {
        defer {
            close(fd)
            lock.withLock {
                if !partial.isEmpty { complete.append(String(decoding: partial, as: UTF8.self)) }
                partial = []
            }
            ended.signal()
        }
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
