// The built `statefn` binary, run as a user would run it: a real process on a real port. Its JSON log lines are
// collected so tests can wait for "statefn listening" and read the bound port.
import Foundation

public final class GatewayProcess: @unchecked Sendable {
    // `lock` guards `logLines` and `exitStatus`; the rest is set once in init.
    private let process = Process()
    private let lock = NSLock()
    private var logLines: [String] = []
    private var partial = Data()
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

    /// Starts `statefn serve` on a free port and waits until it listens. `environment` replaces the inherited one
    /// except PATH and HOME. Authentication is off (`--insecure-no-auth`) unless `authenticated` is true, so tests
    /// about other things need no credentials.
    public init(
        arguments: [String] = [], environment: [String: String] = [:], authenticated: Bool = false,
        startTimeout: Double = 120
    ) throws {
        guard FileManager.default.isExecutableFile(atPath: Self.binaryPath) else {
            throw TestHTTPError(description: "\(Self.binaryPath) is missing: run `swift build` first")
        }
        process.executableURL = URL(fileURLWithPath: Self.binaryPath)
        process.arguments = ["serve", "--listen", "127.0.0.1:0"] + (authenticated ? [] : ["--insecure-no-auth"]) + arguments
        var env = ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", "HOME": NSTemporaryDirectory()]
        env.merge(environment) { $1 }
        process.environment = env
        process.currentDirectoryURL = URL(fileURLWithPath: Self.repositoryRoot)
        let stderr = Pipe()
        process.standardError = stderr
        process.standardOutput = FileHandle.nullDevice
        stderr.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let data = handle.availableData
            self?.append(data)
        }
        try process.run()
        let deadline = Date().addingTimeInterval(startTimeout)
        while Date() < deadline {
            if let line = logs.first(where: { $0.contains("\"statefn listening\"") }),
                let range = line.range(of: #"127\.0\.0\.1:(\d+)"#, options: .regularExpression)
            {
                port = Int(line[range].split(separator: ":").last!)!
                return
            }
            guard process.isRunning else {
                throw TestHTTPError(description: "statefn exited at start-up:\n\(logs.joined(separator: "\n"))")
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        process.terminate()
        throw TestHTTPError(description: "statefn did not start listening:\n\(logs.joined(separator: "\n"))")
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    public var pid: Int32 { process.processIdentifier }

    public var logs: [String] { lock.withLock { logLines } }

    public func client() -> TestHTTPClient { TestHTTPClient(port: port) }

    /// Sends `signal` and waits for the process to exit; returns its exit status.
    @discardableResult
    public func stop(signal: Int32 = SIGTERM, timeout: Double = 60) -> Int32 {
        kill(process.processIdentifier, signal)
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning, Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            return -1
        }
        return process.terminationStatus
    }

    private func append(_ data: Data) {
        lock.withLock {
            partial.append(data)
            while let newline = partial.firstIndex(of: UInt8(ascii: "\n")) {
                logLines.append(String(decoding: partial[partial.startIndex..<newline], as: UTF8.self))
                partial.removeSubrange(partial.startIndex...newline)
            }
        }
    }
}
