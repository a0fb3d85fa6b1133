// A short-lived program run to its end, for tests: the statefn CLI, a check script. (A long-running gateway is a
// GatewayProcess.)
import Foundation

/// Runs `executable` to its end, killed after `timeout` seconds: its exit status, its stdout, and its stderr (or,
/// `mergingErrors`, stderr into the output in the order written, and errors empty). `environment` nil inherits
/// the test's. Both pipes are drained as they fill, so neither can block the program.
public func runToEnd(
    _ executable: String, _ arguments: [String], environment: [String: String]? = nil,
    currentDirectory: String = GatewayProcess.repositoryRoot, mergingErrors: Bool = false, timeout: Double = 300
) throws -> (status: Int32, output: String, errors: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    process.currentDirectoryURL = URL(fileURLWithPath: currentDirectory)
    if let environment { process.environment = environment }
    let (stdout, stderr) = (Pipe(), mergingErrors ? nil : Pipe())
    let (output, errors) = (OutputBuffer(), OutputBuffer())
    process.standardOutput = stdout
    process.standardError = stderr ?? stdout
    process.standardInput = FileHandle.nullDevice
    // Each pipe is read by a thread of its own with blocking reads, not by a readabilityHandler. That is a
    // libdispatch read source, and tearing such sources down while other threads set up theirs can leave a freed
    // epoll note reachable (swift-corelibs-libdispatch issue 949, open): it crashed a whole test run once, with
    // SIGSEGV in _dispatch_event_loop_drain, while a test waited here.
    let readers = [(stdout, output)] + (stderr.map { [($0, errors)] } ?? [])
    let drained = DispatchSemaphore(value: 0)
    for (pipe, buffer) in readers {
        let handle = pipe.fileHandleForReading
        Thread.detachNewThread {
            while true {
                let chunk = handle.availableData
                if chunk.isEmpty { break }
                buffer.append(chunk)
            }
            drained.signal()
        }
    }
    try process.run()
    let deadline = Date().addingTimeInterval(timeout)
    while process.isRunning, Date() < deadline { usleep(20_000) }
    if process.isRunning {
        process.terminate()
        process.waitUntilExit()
        throw TestHTTPError(description: "\(executable) ran over \(Int(timeout)) s: \(output.text)")
    }
    process.waitUntilExit()
    // The pipes end when the program and whatever it started that kept them have closed them.
    for _ in readers { _ = drained.wait(timeout: .now() + 30) }
    return (process.terminationStatus, output.text, errors.text)
}

/// Bytes from a pipe's reader thread, read by the test thread.
private final class OutputBuffer: @unchecked Sendable {  // `data` is only touched under `lock`.
    private let lock = NSLock()
    private var data = Data()

    func append(_ more: Data) {
        lock.lock()
        data.append(more)
        lock.unlock()
    }

    var text: String {
        lock.lock()
        defer { lock.unlock() }
        return String(decoding: data, as: UTF8.self)
    }
}
