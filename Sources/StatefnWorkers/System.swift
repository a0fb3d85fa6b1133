// The system calls StatefnWorkers makes, each wrapped once, as swift-system does: EINTR is retried in one place
// (`System.retrying`), and a failure is a typed `Errno` rather than -1 and a global to read in time.
import CLinux
import Glibc

/// An errno value as an error.
struct Errno: Error, Equatable, CustomStringConvertible {
    let code: Int32

    /// The calling thread's errno, right after a failed call.
    static var current: Errno { Errno(code: errno) }

    static let wouldBlock = Errno(code: EAGAIN)
    static let interrupted = Errno(code: EINTR)

    /// strerror(3)'s text.
    var description: String { String(cString: strerror(code)) }
}

enum System {
    /// Calls `call` again while it fails with EINTR; another failure (-1) is the errno it left.
    @inline(__always)
    static func retrying<T: FixedWidthInteger>(_ call: () -> T) -> Result<T, Errno> {
        while true {
            let result = call()
            if result != -1 { return .success(result) }
            if errno != EINTR { return .failure(.current) }
        }
    }

    /// read(2) into `buffer`: the count, 0 at end of file.
    static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) -> Result<Int, Errno> {
        retrying { Glibc.read(fd, buffer.baseAddress, buffer.count) }
    }

    /// write(2) of `bytes`: how many the kernel took.
    static func write(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Result<Int, Errno> {
        retrying { Glibc.write(fd, bytes.baseAddress, bytes.count) }
    }

    /// write(2) again and again until all of `bytes` went or the pipe would block: how many went, and the error
    /// that stopped it short, if any.
    static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> (written: Int, stopped: Errno?) {
        var written = 0
        while written < bytes.count {
            switch write(fd, UnsafeRawBufferPointer(rebasing: bytes[written...])) {
            case .success(let count): written += count
            case .failure(let error): return (written, error)
            }
        }
        return (written, nil)
    }

    /// waitpid(2) for `pid`: its raw wait status, or nil with WNOHANG if it has not exited.
    static func wait(for pid: pid_t, options: Int32 = 0) -> Result<Int32?, Errno> {
        var status: Int32 = 0
        return retrying { waitpid(pid, &status, options) }.map { $0 == 0 ? nil : status }
    }

    /// close(2). Linux releases the descriptor even when close reports EINTR, so it is never retried.
    static func close(_ fd: Int32) {
        _ = Glibc.close(fd)
    }

    /// pipe2(2), close-on-exec.
    static func pipe() -> Result<(read: Int32, write: Int32), Errno> {
        var fds: [Int32] = [-1, -1]
        return retrying { clinux_pipe2(&fds, O_CLOEXEC) }.map { _ in (fds[0], fds[1]) }
    }

    /// O_NONBLOCK on `fd` (a new pipe's other status flags are only its access mode, which F_SETFL leaves alone).
    static func setNonBlocking(_ fd: Int32) {
        _ = fcntl(fd, F_SETFL, O_NONBLOCK)
    }

    /// The names in a directory (only its subdirectories, with `directoriesOnly`), without `.` and `..`, sorted;
    /// nil if it cannot be opened. opendir(3) and readdir(3).
    static func directoryEntries(_ path: String, directoriesOnly: Bool = false) -> [String]? {
        guard let directory = opendir(path) else { return nil }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            if directoriesOnly && entry.pointee.d_type != DT_DIR { continue }
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// open(2) read-only or write-only, close-on-exec.
    static func open(_ path: String, writing: Bool = false) -> Result<Int32, Errno> {
        retrying { Glibc.open(path, (writing ? O_WRONLY : O_RDONLY) | O_CLOEXEC) }
    }
}

/// How a worker process ended, decoded from its wait status (`clinux_wait_*`: the W* macros Swift cannot see).
struct ExitStatus: CustomStringConvertible, Equatable {
    let raw: Int32
    var isCleanExit: Bool { raw == 0 }
    var description: String {
        clinux_wait_exited(raw) != 0
            ? "exited with status \(clinux_wait_exit_status(raw))" : "killed by signal \(clinux_wait_term_signal(raw))"
    }
}

/// A whole small file, or nil if it cannot be read or is over `limit` bytes.
func readFile(_ path: String, limit: Int) -> [UInt8]? {
    guard case .success(let fd) = System.open(path) else { return nil }
    defer { System.close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 64 * 1024)
    while true {
        guard case .success(let count) = chunk.withUnsafeMutableBytes({ System.read(fd, into: $0) }) else {
            return nil
        }
        if count == 0 { return bytes }
        bytes += chunk[..<count]
        if bytes.count > limit { return nil }
    }
}

/// `readFile` as text, for /proc and cgroup files (small, and never blocking on I/O).
func readText(_ path: String) -> String? {
    readFile(path, limit: 1 << 20).map { String(decoding: $0, as: UTF8.self) }
}

/// Writes `text` to a cgroup control file in one write(2), as the kernel wants; false if it refused (errno says
/// why).
func writeWholeFile(_ path: String, _ text: String) -> Bool {
    guard case .success(let fd) = System.open(path, writing: true) else { return false }
    defer { System.close(fd) }
    let bytes = Array(text.utf8)
    guard case .success(let count) = bytes.withUnsafeBytes({ System.write(fd, $0) }) else { return false }
    return count == bytes.count
}
