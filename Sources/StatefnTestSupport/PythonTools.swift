// The Python tools some tests drive (oidc-provider-mock, openapi-spec-validator, schemathesis, kubernetes-validate),
// from the virtual environment scripts/python-tools makes. A test that needs one makes the environment itself if it
// is missing, so `swift test` alone works too; it never skips.
import Foundation

public enum PythonTools {
    /// `$STATEFN_VENV`, or `.venv` at the repository root.
    public static var environment: String {
        ProcessInfo.processInfo.environment["STATEFN_VENV"] ?? GatewayProcess.repositoryRoot + "/.venv"
    }

    private static let ready: Result<Void, TestHTTPError> = {
        do {
            let (status, output, _) = try runToEnd(
                GatewayProcess.repositoryRoot + "/scripts/python-tools", [], mergingErrors: true, timeout: 900)
            return status == 0 ? .success(()) : .failure(TestHTTPError(description: "scripts/python-tools: \(output)"))
        } catch {
            return .failure(TestHTTPError(description: "scripts/python-tools: \(error)"))
        }
    }()

    /// The path of `tool` in the environment, made first if need be.
    public static func path(_ tool: String) throws -> String {
        try ready.get()
        return environment + "/bin/" + tool
    }

    /// Starts `executable` in the background; the caller stops it with `terminate()`.
    public static func start(_ executable: String, _ arguments: [String]) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        try process.run()
        return process
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on right now, for a server a test starts (the kernel picks it).
public func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw TestHTTPError(description: "socket: errno \(errno)") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
            bind(fd, socketAddress, length) == 0 && getsockname(fd, socketAddress, &length) == 0
        }
    }
    guard bound else { throw TestHTTPError(description: "bind: errno \(errno)") }
    return Int(UInt16(bigEndian: address.sin_port))
}
